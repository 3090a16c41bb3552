"""Raw rows out of input files: JSON, JSONL, .gz, Parquet, CSV; files, globs or folders.

A source never raises on a bad row: a line that is not valid JSON (or not valid
UTF-8, or not an object) comes out as a ``RawRow`` with ``error`` set and the
raw text kept, so the pipeline can quarantine it and go on with the file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

#: Formats a file can be read as (``auto`` looks at the extension, then the first byte).
FORMATS = ("auto", "json", "jsonl", "parquet", "csv")
_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
#: Largest raw text kept verbatim in quarantine (the rest is summarised, never silently cut).
RAW_KEEP = 1_000_000
#: A JSONL line longer than this is quarantined without being parsed: no record that passes validation
#: (at most --max-chars characters of content) comes near it, and parsing it would cost memory many
#: times its size (a 36 MB line of a million turns makes about a GB of Python objects).
MAX_ROW_BYTES = 16 * 1024 * 1024
#: UTF-8 byte order mark; dropped where it opens the first line of a JSONL file.
BOM = b"\xef\xbb\xbf"


class SourceError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, not JSON at all)."""


@dataclass(slots=True)
class RawRow:
    """One input row: its number in the file, the parsed object or the error, and the raw text."""

    row: int
    value: dict[str, Any] | None
    raw: str | None = None
    error: str | None = None

    def raw_text(self) -> str:
        try:
            text = self.raw if self.raw is not None else orjson.dumps(self.value, default=str).decode()
        except TypeError as exc:  # orjson writes at most 254 levels of nesting
            return f"[cannot be written back as JSON ({exc}); see row {self.row} of the source file]"
        if len(text) > RAW_KEEP:
            return text[:RAW_KEEP] + f"... [{len(text) - RAW_KEEP} more characters, see the source file]"
        return text


def expand_paths(paths: list[str]) -> list[Path]:
    """Files named directly, by glob, or inside folders (recursively), sorted, without repeats.

    A path that exists is that file or folder, whatever characters its name holds (``data[1].jsonl``
    is the file of that name, never ``data1.jsonl``); only a path that names nothing is tried as a glob.
    """
    out: list[Path] = []
    for p in paths:
        if os.path.lexists(p) or not glob.has_magic(p):
            matches = [Path(p)]
        else:
            matches = [Path(m) for m in sorted(glob.glob(p, recursive=True))]
        if not matches:
            raise SourceError(f"{p}: no file matches this pattern")
        for m in matches:
            if m.is_dir():
                out.extend(f for f in sorted(m.rglob("*")) if f.is_file() and _data_suffix(f))
            elif m.exists():
                out.append(m)
            else:
                raise SourceError(f"{m}: no such file")
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def _data_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def file_sha256(path: Path, stop: threading.Event | None = None) -> str | None:
    """SHA-256 of the file's bytes; None if ``stop`` is set before it is done."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            if stop is not None and stop.is_set():
                return None
            h.update(block)
    return h.hexdigest()


class HashingFile(io.RawIOBase):
    """A file whose bytes also go through ``digest`` as they are read (hashed where they are read
    anyway, not read a second time). ``read_to_end`` hashes what was not read."""

    def __init__(self, path: Path, digest: Any) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        self.digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.file.readinto(buffer)
        if n:
            with memoryview(buffer) as view:
                self.digest.update(view[:n])
        return n or 0

    def read_to_end(self) -> None:
        chunk = bytearray(1 << 20)
        while n := self.file.readinto(chunk):
            self.digest.update(memoryview(chunk)[:n])

    def close(self) -> None:
        self.file.close()
        super().close()


def open_bytes(path: Path, raw: HashingFile | None = None) -> io.BufferedIOBase:
    """The file's bytes (decompressed if it is gzip), read from ``raw`` if given."""
    fh = io.BufferedReader(raw) if raw is not None else open(path, "rb")  # noqa: SIM115 - the caller closes it
    head = fh.peek(2)[:2] if hasattr(fh, "peek") else b""
    if head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)  # type: ignore[return-value]
    return fh


def detect_format(path: Path) -> str:
    fmt = _data_suffix(path)
    if fmt:
        return fmt
    with open_bytes(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    raise SourceError(f"{path}: cannot tell the format from the name or content; pass --format")


def read_rows(path: Path, fmt: str = "auto", batch_size: int = 50_000) -> Iterator[RawRow]:
    """Every row of ``path`` as a RawRow, in file order."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        yield from _jsonl(path)
    elif fmt == "json":
        yield from _json(path)
    elif fmt == "parquet":
        yield from _parquet(path, batch_size)
    elif fmt == "csv":
        yield from _csv(path)
    else:
        raise SourceError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _decode_object(data: bytes | str, row: int) -> RawRow:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        reason = str(exc).split(": line")[0]
        if isinstance(data, bytes):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as uexc:
                reason = f"invalid UTF-8 at byte {uexc.start}"
        return RawRow(row, None, text, f"malformed JSON: {reason}")
    except RecursionError:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return RawRow(row, None, text, "malformed JSON: nested too deeply")
    if not isinstance(value, dict):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return RawRow(row, None, text, f"expected a JSON object, got {type(value).__name__}")
    return RawRow(row, value)


def decode_line(line: bytes, row: int) -> RawRow:
    """One non-blank JSONL line (with or without its newline) as the RawRow of row number ``row``."""
    if len(line) > MAX_ROW_BYTES:
        head = line[:RAW_KEEP].decode("utf-8", "replace")
        return RawRow(
            row,
            None,
            f"{head}... [{len(line) - RAW_KEEP} more bytes, see the source file]",
            f"row of {len(line)} bytes is larger than the {MAX_ROW_BYTES}-byte limit; not parsed",
        )
    return _decode_object(line.strip(), row)


def _jsonl(path: Path) -> Iterator[RawRow]:
    with open_bytes(path) as fh:
        for row, line in enumerate(fh):
            if row == 0 and line.startswith(BOM):
                line = line[len(BOM) :]
            if line.strip():
                yield decode_line(line, row)


def _json(path: Path) -> Iterator[RawRow]:
    with open_bytes(path) as fh:
        data = fh.read()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Not one JSON document: perhaps JSON Lines with a .json name.
        if data.lstrip().startswith(b"{") and b"\n" in data.strip():
            yield from _jsonl(path)
            return
        raise SourceError(f"{path}: not valid JSON ({exc}); fix the file or pass --format jsonl") from exc
    if isinstance(value, dict):
        # A single object, or {"data": [...]}-style wrappers with exactly one list of objects.
        lists = [v for v in value.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        value = lists[0] if len(lists) == 1 and len(value) <= 3 else [value]
    if not isinstance(value, list):
        raise SourceError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    for i, item in enumerate(value):
        if isinstance(item, dict):
            yield RawRow(i, item)
        else:
            yield RawRow(
                i, None, orjson.dumps(item).decode(), f"expected a JSON object, got {type(item).__name__}"
            )


def _parquet(path: Path, batch_size: int) -> Iterator[RawRow]:
    row = 0
    for batch in parquet_record_batches(path, batch_size):
        yield from parquet_rows(batch, row)
        row += batch.num_rows


def parquet_record_batches(path: Path, batch_size: int) -> Iterator[pa.RecordBatch]:
    """A Parquet file's rows in record batches, with memory that does not grow with the file.

    Arrow's default ``pre_buffer`` reads ahead the column chunks of every row group still to come and keeps
    them until the reader is closed: iterating a 536 MB file ended with 576 MB allocated (65 MB without).
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, pre_buffer=False) as pf:
        yield from pf.iter_batches(batch_size=batch_size)


#: Rows of a Parquet batch made into Python objects at a time: the first rows of a file (read to detect
#: its reader) cost a few milliseconds, not the seconds that a whole 50k-row batch takes.
PARQUET_ROWS_AT_ONCE = 1024


def parquet_rows(batch: pa.RecordBatch | pa.Table, first_row: int) -> Iterator[RawRow]:
    """The rows of a Parquet batch as RawRows. A string that is not UTF-8 (Parquet writers do not
    check) makes its row an error row that names the column, instead of stopping the file."""
    for start in range(0, batch.num_rows, PARQUET_ROWS_AT_ONCE):
        part = batch.slice(start, PARQUET_ROWS_AT_ONCE)
        try:
            rows = part.to_pylist()
        except UnicodeDecodeError:
            for i in range(part.num_rows):
                yield _parquet_row(part.slice(i, 1), first_row + start + i)
            continue
        for i, item in enumerate(rows):
            yield RawRow(first_row + start + i, item)


def _parquet_row(one: pa.RecordBatch | pa.Table, row: int) -> RawRow:
    try:
        return RawRow(row, one.to_pylist()[0])
    except UnicodeDecodeError:
        pass
    value: dict[str, Any] = {}
    bad = []
    for name, column in zip(one.column_names, one.columns, strict=True):
        try:
            value[name] = column.to_pylist()[0]
        except UnicodeDecodeError:
            bad.append(name)
            try:  # the text with U+FFFD for the bad bytes, as raw text to look at (the file has the bytes)
                value[name] = column.cast(pa.binary()).to_pylist()[0].decode("utf-8", "replace")
            except (pa.ArrowException, AttributeError):
                value[name] = "<not UTF-8>"
    text = orjson.dumps(value, default=str).decode()
    return RawRow(row, None, text, f"invalid UTF-8 in column {', '.join(map(repr, bad))}")


def _csv(path: Path) -> Iterator[RawRow]:
    csv.field_size_limit(min(2**31 - 1, os.sys.maxsize))
    with open_bytes(path) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.DictReader(text)
        for i, rec in enumerate(reader):
            if None in rec:
                extra = rec.pop(None)
                yield RawRow(
                    i,
                    None,
                    orjson.dumps({**rec, "_extra": extra}).decode(),
                    f"CSV row has {len(extra)} more fields than the header",
                )
                continue
            yield RawRow(i, dict(rec))
