"""The SHA-256 of a file: one function for unit keys, shard and manifest checks, and model fingerprints."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

BLOCK = 1 << 20


def file_sha256(path: str | Path, stop: threading.Event | None = None) -> str | None:
    """SHA-256 of the file's bytes, read a MiB at a time; None if ``stop`` is set before it is done."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    return h.hexdigest()
