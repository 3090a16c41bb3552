"""Readers: one small class per input format, and auto-detection among them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from curation.ingest.readers.alpaca import AlpacaPairReader, AlpacaReader
from curation.ingest.readers.alpaca_eval import AlpacaEvalReader
from curation.ingest.readers.base import Reader, RowError
from curation.ingest.readers.chat import (
    MessagesReader,
    ShareGPTPairReader,
    ShareGPTReader,
    TRLPreferenceReader,
)
from curation.ingest.readers.hh import HHReader, split_transcript
from curation.ingest.readers.mapping import MappingReader
from curation.ingest.readers.rankings import CompletionsReader, OASSTTreeReader, SolutionsReader

#: Detection order matters: the most specific formats first.
READERS: tuple[type[Reader], ...] = (
    HHReader,
    AlpacaEvalReader,
    ShareGPTPairReader,
    ShareGPTReader,
    OASSTTreeReader,
    SolutionsReader,
    CompletionsReader,
    AlpacaPairReader,
    TRLPreferenceReader,
    MessagesReader,
    AlpacaReader,
)
BY_NAME: dict[str, type[Reader]] = {r.name: r for r in READERS}


class DetectError(ValueError):
    pass


def detect(rows: Iterable[Mapping[str, Any]], where: str) -> type[Reader]:
    """The first reader that recognises most of the sample rows."""
    sample = [r for r in rows if r is not None][:20]
    if not sample:
        raise DetectError(f"{where}: no readable row to detect the format from; pass --reader")
    for reader in READERS:
        hits = sum(reader.sniff(r) for r in sample)
        if hits * 2 > len(sample):
            return reader
    keys = sorted({k for r in sample for k in r})[:12]
    raise DetectError(
        f"{where}: unknown layout (fields: {', '.join(keys)}). Pass --reader "
        f"({', '.join(BY_NAME)}) or a column mapping: --kind sft --map prompt=FIELD --map response=FIELD"
    )


__all__ = [
    "BY_NAME",
    "READERS",
    "DetectError",
    "MappingReader",
    "Reader",
    "RowError",
    "detect",
    "split_transcript",
]
