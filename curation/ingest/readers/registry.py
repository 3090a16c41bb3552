"""The readers, registered by their own modules: detection order and the CLI's list come from here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from curation.ingest.readers.base import Reader

_PRIORITY: dict[type[Reader], int] = {}


def register(priority: int) -> Callable[[type[Reader]], type[Reader]]:
    """Class decorator: the reader takes part in detection, tried by ``priority`` (highest first, so the
    most specific formats first; no two readers share a priority or a name)."""

    def add(cls: type[Reader]) -> type[Reader]:
        clash = [r for r, p in _PRIORITY.items() if p == priority or r.name == cls.name]
        if clash:
            raise ValueError(f"reader {cls.name!r} (priority {priority}) clashes with {clash[0].name!r}")
        _PRIORITY[cls] = priority
        return cls

    return add


def readers() -> tuple[type[Reader], ...]:
    """Every registered reader, in detection order."""
    return tuple(sorted(_PRIORITY, key=lambda r: -_PRIORITY[r]))


def reader_help() -> str:
    """The readers with their summaries, for `curate ingest --help`."""
    return "\n\n".join(f"{r.name}: {r.summary}" for r in readers())


class DetectError(ValueError):
    pass


def detect(rows: Iterable[Mapping[str, Any]], where: str) -> type[Reader]:
    """The first reader that recognises most of the sample rows."""
    sample = [r for r in rows if r is not None][:20]
    if not sample:
        raise DetectError(f"{where}: no readable row to detect the format from; pass --reader")
    for reader in readers():
        hits = sum(reader.sniff(r) for r in sample)
        if hits * 2 > len(sample):
            return reader
    keys = sorted({k for r in sample for k in r})[:12]
    raise DetectError(
        f"{where}: unknown layout (fields: {', '.join(keys)}). Pass --reader "
        f"({', '.join(r.name for r in readers())}) or a column mapping: "
        "--kind sft --map prompt=FIELD --map response=FIELD"
    )
