"""Readers: one module per input format, each registering its reader (readers.registry), and detection."""

from __future__ import annotations

import importlib
import pkgutil

from curation.ingest.readers.base import Reader, RowError
from curation.ingest.readers.hh import split_transcript
from curation.ingest.readers.mapping import MappingReader
from curation.ingest.readers.registry import DetectError, detect, reader_help, readers

for _module in pkgutil.iter_modules(__path__):  # every format module, so that its reader registers
    importlib.import_module(f"{__name__}.{_module.name}")

#: Detection order: the most specific formats first (each reader's registered priority).
READERS = readers()
BY_NAME = {r.name: r for r in READERS}

__all__ = [
    "BY_NAME",
    "READERS",
    "DetectError",
    "MappingReader",
    "Reader",
    "RowError",
    "detect",
    "reader_help",
    "split_transcript",
]
