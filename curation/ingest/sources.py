"""Raw rows out of input files: JSON, JSONL, .gz, Parquet, CSV; files, globs or folders.

A source never raises on a bad row: a line that is not valid JSON (or not valid
UTF-8, or not an object, or holds an integer JSON readers would turn into a float),
a CSV record that is not well-formed CSV, comes out as a ``RawRow`` with ``error``
set and the raw text kept, so the pipeline can quarantine it and go on with the file.

A file that cannot be read on (a truncated or corrupt gzip stream, a damaged Parquet
file, an I/O error) raises ``SourceError`` naming the file, the rows read before the
error and the reason; so does a JSON document larger than the cap on what is parsed whole.

Memory does not grow with a row: a JSONL line or CSV line longer than the row limit is
quarantined from its first ``RAW_KEEP`` bytes while the rest of it is skipped unread,
and runs of blank lines are skipped in C, a megabyte at a time.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import glob
import gzip
import io
import json
import lzma
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

#: Formats a file can be read as (``auto`` looks at the extension, then the first byte).
FORMATS = ("auto", "json", "jsonl", "parquet", "csv")
_SUFFIXES = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
}
#: Field separators a CSV file may use besides the comma (found from its header line).
CSV_DELIMITERS = ("\t", ";", "|")
#: Largest raw text kept verbatim in quarantine (the rest is summarised, never silently cut).
RAW_KEEP = 1_000_000
#: A JSONL line (or CSV line) longer than this is quarantined without being parsed or even held: no record
#: that passes validation (at most --max-chars characters of content) comes near it, and parsing it would
#: cost memory many times its size (a 36 MB line of a million turns makes about a GB of Python objects).
#: ``row_byte_limit`` raises it with --max-chars.
MAX_ROW_BYTES = 16 * 1024 * 1024
#: Bytes a line may take per character of --max-chars before it is refused unread: a JSON escape takes up
#: to 12 bytes for one character, and an HH pair's line holds its prompt three times.
ROW_BYTES_PER_CHAR = 64
#: Largest JSON document (after decompression) parsed whole. A JSON array is parsed in one piece, so its
#: memory grows with it (about 3x its size in Python objects); datasets larger than this belong in JSON
#: Lines, which are read a batch at a time. Raised with ``curate ingest --max-json-mb``.
MAX_JSON_BYTES = 256 * 1024 * 1024
#: UTF-8 byte order mark; dropped where it opens the first line of a JSONL file.
BOM = b"\xef\xbb\xbf"
#: Bytes read at a time by the JSONL and JSON row readers.
READ_BYTES = 1 << 20
#: A batch ends at this many bytes of its rows' text (JSONL lines, CSV records), even before it has its
#: number of rows: a .jsonl.gz of long lines (each under the row limit) would otherwise hold gigabytes in
#: one batch (1 GiB of 8 MiB lines: +1.7 GB at 128 MiB, +0.9 GB at 64 MiB, +0.55 GB at 32 MiB; more batches
#: of ordinary rows cost per-batch work). Rows of 1.3 KB on average fill a batch of 50,000 rows first.
BATCH_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


def row_byte_limit(max_chars: int) -> int:
    """Bytes above which one input row is quarantined unread, for a --max-chars of ``max_chars``."""
    return max(MAX_ROW_BYTES, ROW_BYTES_PER_CHAR * max_chars)


class SourceError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, not JSON at all, damaged, too large)."""


@dataclass(slots=True)
class RawRow:
    """One input row: its number in the file, the parsed object or the error, and the raw text."""

    row: int
    value: dict[str, Any] | None
    raw: str | None = None
    error: str | None = None
    field: str = "row"  # where the error is, when it is in one field
    size: int = dataclasses.field(
        default=0, compare=False
    )  # bytes (characters for CSV) of its text held while read

    def raw_text(self) -> str:
        try:
            text = self.raw if self.raw is not None else orjson.dumps(self.value, default=str).decode()
        except TypeError as exc:  # orjson writes at most 254 levels of nesting
            return f"[cannot be written back as JSON ({exc}); see row {self.row} of the source file]"
        if len(text) > RAW_KEEP:
            return text[:RAW_KEEP] + f"... [{len(text) - RAW_KEEP} more characters, see the source file]"
        return text


# ------------------------------------------------------------------ damaged files
#: What reading a damaged input raises: a truncated gzip stream (EOFError), a bad CRC or corrupt deflate
#: data (BadGzipFile, an OSError; zlib.error), a damaged Parquet file (ArrowInvalid, or ArrowIOError, an
#: OSError), an I/O error. (Not Arrow's other errors: "not implemented" or a type error is a bug of ours.)
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, pa.ArrowInvalid)


def why_unreadable(exc: BaseException) -> str:
    """What is wrong with a file whose reading raised ``exc``, in one line."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError):
        return f"the compressed stream ends early, the file is truncated ({text})"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"corrupt gzip data ({text})"
    if isinstance(exc, lzma.LZMAError):
        return f"corrupt xz data ({text})"
    if isinstance(exc, pa.ArrowException):
        return f"damaged or not Parquet ({text})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return text or type(exc).__name__


def guarded(path: Path, items: Iterable[T], count: Callable[[T], int] = lambda _: 1) -> Iterator[T]:
    """``items`` read from ``path``; the error of a damaged file becomes a SourceError naming the file, how
    many rows (``count`` of each item) came before it, and the reason."""
    it = iter(items)
    done = 0
    try:
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except SourceError:
                raise
            except READ_ERRORS as exc:
                raise SourceError(
                    f"{path}: cannot be read to the end: {why_unreadable(exc)}; nothing of this file was "
                    f"ingested ({done} rows had been read)"
                ) from exc
            yield item
            done += count(item)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


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


#: Compressed inputs read as they stream (by their first bytes, whatever the name says), with the suffix
#: each usually has.
COMPRESSED = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".xz": b"\xfd7zXZ\x00"}


def _data_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


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


#: Containers and compressions curate does not read, by their first bytes: what to do is said instead of
#: reading them as text (which quarantined every line, or failed to "tell the format").
_NOT_READ = {
    b"\x28\xb5\x2f\xfd": "zstd-compressed: decompress it first (zstd -d FILE)",
    b"PK\x03\x04": "a ZIP archive: unpack it first and ingest its files",
    b"7z\xbc\xaf\x27\x1c": "a 7-Zip archive: unpack it first and ingest its files",
}
#: Byte order marks of text that is not UTF-8 (UTF-32's first: its LE mark starts with UTF-16's).
_OTHER_ENCODINGS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


def open_bytes(path: Path, raw: HashingFile | None = None) -> io.BufferedIOBase:
    """The file's bytes (decompressed if it is gzip, bzip2 or xz), read from ``raw`` if given; closing it
    closes the file. A file that is not UTF-8 text once decompressed (UTF-16 or UTF-32, by its byte order
    mark or by the zero bytes between ASCII letters), or an archive or compression curate does not read, is
    a SourceError that says what to do."""
    fh: Any = io.BufferedReader(raw) if raw is not None else open(path, "rb")  # noqa: SIM115 - the caller closes it
    try:
        head = fh.peek(6)[:6]
        # A decompressor closes the file under it only if it opened it itself: told to by the attribute
        # each keeps for that. (Not wrapped in a reader of ours: ``read1`` must give what is decompressed so
        # far, so that the rows before a damaged part come out before its error.)
        if head.startswith(COMPRESSED[".gz"]):
            gz = gzip.GzipFile(fileobj=fh)
            gz.myfileobj = fh  # type: ignore[attr-defined]
            fh = gz
        elif head.startswith(COMPRESSED[".bz2"]):
            fh = bz2.BZ2File(fh)
            fh._closefp = True  # noqa: SLF001
        elif head.startswith(COMPRESSED[".xz"]):
            fh = lzma.LZMAFile(fh)  # noqa: SIM115 - the caller closes it
            fh._closefp = True  # noqa: SLF001
        _check_text(path, fh.peek(16)[:16])
    except BaseException:
        fh.close()
        raise
    return fh


def _check_text(path: Path, head: bytes) -> None:
    for magic, what in _NOT_READ.items():
        if head.startswith(magic):
            raise SourceError(f"{path}: {what}")
    if head.startswith(b"PAR1"):
        return
    encoding = next((e for bom, e in _OTHER_ENCODINGS.items() if head.startswith(bom)), None)
    if encoding is None and len(head) >= 8 and (head[1::2].count(0) >= 4 or head[0::2].count(0) >= 4):
        encoding = "UTF-16 (no byte order mark, but a zero byte beside each ASCII character)"
    if encoding is not None:
        raise SourceError(
            f"{path}: the text is {encoding}, not UTF-8; convert it first, e.g. "
            f"`iconv -f {encoding.split()[0]} -t UTF-8 FILE > FILE.utf8` (nothing of this file was ingested)"
        )


def detect_format(path: Path) -> str:
    fmt = _data_suffix(path)
    if fmt:
        return fmt
    try:
        with open_bytes(path) as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: cannot be read: {why_unreadable(exc)}") from exc
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"["):
        return "json"
    if head.startswith(b"{"):
        return "jsonl"
    raise SourceError(f"{path}: cannot tell the format from the name or content; pass --format")


def read_rows(
    path: Path,
    fmt: str = "auto",
    batch_size: int = 50_000,
    limit: int = MAX_ROW_BYTES,
    max_json_bytes: int = MAX_JSON_BYTES,
) -> Iterator[RawRow]:
    """Every row of ``path`` as a RawRow, in file order. A JSONL or CSV row longer than ``limit`` bytes is
    an error row (read no further than its first ``RAW_KEEP`` bytes); a JSON document is read whole only
    up to ``max_json_bytes``. A damaged file raises SourceError (see ``guarded``)."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "jsonl":
        rows = _jsonl(path, limit)
    elif fmt == "json":
        rows = _json(path, limit, max_json_bytes)
    elif fmt == "parquet":
        rows = _parquet(path, batch_size, limit)
    elif fmt == "csv":
        rows = _csv(path, limit)
    else:
        raise SourceError(f"{path}: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    yield from guarded(path, rows)


# ------------------------------------------------------------------ JSON values
#: Integers orjson reads exactly; one outside becomes a float (so does it in Arrow).
_INT_RANGE = (-(2**63), 2**64 - 1)
_FLOAT_LOW, _FLOAT_HIGH = float(-(2**63)), float(2**64)


#: What follows every key of a JSON object: its closing quote, optional whitespace and a colon. The same
#: bytes may stand inside a string value (a quoted line of code), so their count is never below the number
#: of keys the text holds.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_KEY_END_SPACED = re.compile(rb'"[ \t\n\r]+:')
#: Texts up to this size are counted by one ``findall`` (fastest; a list of at most size/2 matches).
_FINDALL_BYTES = 1 << 18


def _more_key_ends(data: bytes, keys: int) -> bool:
    """Whether ``data`` holds more places where a key may end than ``keys``. A ``":`` after exactly one
    backslash is an escaped quote inside a string, not a key's end; it is discounted only when the plain
    count is over (a string holding JSON or code), as the discount costs two more scans."""
    if len(data) <= _FINDALL_BYTES:
        ends = len(_KEY_END.findall(data))
    else:  # a JSON document: no list of every match
        ends = data.count(b'":') + sum(1 for _ in _KEY_END_SPACED.finditer(data))
    if ends > keys:
        ends -= data.count(b'\\":') - data.count(b'\\\\":')
    return ends > keys


def _scan(value: Any) -> tuple[int, bool]:
    """(keys of every object in ``value``, counted recursively; whether it holds a float as large as an
    integer beyond 64 bits would become). One walk, for the two prefilters of ``_needs_exact``."""
    keys, wide = 0, False
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is dict:
            keys += len(v)
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
        elif t is float and (v >= _FLOAT_HIGH or v <= _FLOAT_LOW):
            wide = True
    return keys, wide


def _needs_exact(data: bytes, value: Any) -> bool:
    """Whether ``value`` (orjson's reading of ``data``) may differ from the text: a key given twice in one
    object (orjson, Arrow and Python's json keep the last value) or an integer beyond 64 bits (made a
    float). Sound: every key in the text is followed by ``"`` + whitespace + ``:``, so when the text holds
    no more of these than the parsed value has keys, no key was given twice; more (a repeated key, or the
    bytes inside a string value) and the text is parsed again, exactly, to decide."""
    keys, wide = _scan(value)
    if wide:
        return True
    return _more_key_ends(data, keys)


class _Pairs(dict):
    """A JSON object read by ``_exact``: a dict (the last value of a repeated key, as every reader keeps)
    that remembers its first key given twice, and then all its pairs."""

    __slots__ = ("pairs", "twice")

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.twice: str | None = None
        self.pairs: list[tuple[str, Any]] | None = None
        if len(self) < len(pairs):
            seen: set[str] = set()
            self.twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            self.pairs = pairs


def _dump_exact(value: Any) -> str:
    """``value`` (read by ``_exact``) as JSON text, every pair of an object with a repeated key kept."""
    if isinstance(value, dict):
        pairs = getattr(value, "pairs", None) or value.items()
        return (
            "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_dump_exact(v)}" for k, v in pairs) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_dump_exact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _exact(data: bytes) -> Any:
    """``data`` parsed with every number exact and every object a ``_Pairs``."""
    return json.loads(data, object_pairs_hook=_Pairs)


def _repeated_key(value: Any, where: str = "") -> tuple[str, str] | None:
    """(the path of the object, the key) of the first key given twice in one object of ``value`` (read by
    ``_exact``), or None."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        at, v = stack.pop()
        if isinstance(v, dict):
            if getattr(v, "twice", None) is not None:
                return at, v.twice  # type: ignore[attr-defined]
            items: list[tuple[str, Any]] = [(f"{at}.{k}" if at else str(k), x) for k, x in v.items()]
        elif isinstance(v, list):
            items = [(f"{at}[{i}]", x) for i, x in enumerate(v)]
        else:
            continue
        stack.extend(reversed(items))  # depth first, in the text's order
    return None


def _repeated_key_error(found: tuple[str, str]) -> str:
    where, key = found
    inside = f" (in {where})" if where else ""
    return (
        f"key {key!r} given twice in one object{inside}: JSON readers keep one of the values silently; "
        "keep one key"
    )


def _exact_error(exact: Any) -> tuple[str, str] | None:
    """(the reason, the field) of the first change a fast reading makes to ``exact``, or None."""
    found = _repeated_key(exact)
    if found:
        where, key = found
        return _repeated_key_error(found), f"{where}.{key}" if where else key
    wide = _wide_int(exact)
    if wide:
        return _wide_int_error(wide), wide[0]
    return None


def _wide_int(value: Any, where: str = "") -> tuple[str, int] | None:
    """(the path, the value) of the first integer of ``value`` outside 64 bits, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (where or "value", value) if not _INT_RANGE[0] <= value <= _INT_RANGE[1] else None
    if isinstance(value, dict):
        items: Iterable[tuple[str, Any]] = (
            (f"{where}.{k}" if where else str(k), v) for k, v in value.items()
        )
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, v in items:
        found = _wide_int(v, key)
        if found:
            return found
    return None


def _wide_int_error(found: tuple[str, int]) -> str:
    where, value = found
    digits = str(value)
    shown = digits if len(digits) <= 40 else f"{digits[:20]}...({len(digits)} digits)"
    return (
        f"integer {shown} at {where} does not fit in 64 bits: JSON readers make it a float "
        "(not the same number); write it as a JSON string to keep it exactly"
    )


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
        if "\r{" in text.replace(" ", ""):  # lines ended by CR alone (classic Mac OS) read as one line
            reason += "; its lines seem to end with a lone CR (old Mac line ends): convert them to LF"
        return RawRow(row, None, text, f"malformed JSON: {reason}")
    except RecursionError:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return RawRow(row, None, text, "malformed JSON: nested too deeply")
    if not isinstance(value, dict):
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return RawRow(row, None, text, f"expected a JSON object, got {type(value).__name__}")
    if _needs_exact(data, value):
        try:
            found = _exact_error(_exact(data))
        except RecursionError:
            found = ("malformed JSON: nested too deeply to be read exactly", "row")
        if found:
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            return RawRow(row, None, text, *found)
    return RawRow(row, value)


def overlong_row(row: int, head: bytes, size: int, limit: int) -> RawRow:
    """The error row of a line of ``size`` bytes, over ``limit``, of which ``head`` was kept."""
    head = head[:RAW_KEEP]
    return RawRow(
        row,
        None,
        f"{head.decode('utf-8', 'replace')}... [{size - len(head)} more bytes, see the source file]",
        f"row of {size} bytes is larger than the {limit}-byte limit; not parsed",
        size=len(head),
    )


def decode_line(line: bytes, row: int, limit: int = MAX_ROW_BYTES) -> RawRow:
    """One non-blank JSONL line (without its newline) as the RawRow of row number ``row``."""
    if len(line) > limit:
        return overlong_row(row, line, len(line), limit)
    raw = _decode_object(line.strip(), row)
    raw.size = len(line)
    return raw


# ------------------------------------------------------------------ JSON Lines
#: What ``bytes.strip()`` removes; a line of nothing else is blank.
_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]*")
_SPACE_BYTES = frozenset(b" \t\n\r\x0b\x0c")


@dataclass(slots=True)
class Line:
    """A non-blank line: its number in the file (blank lines counted), its bytes without the newline (only
    the first ``RAW_KEEP`` if it is longer than the limit) and its length in bytes."""

    row: int
    data: bytes
    size: int


def jsonl_lines(fh: io.BufferedIOBase, limit: int = MAX_ROW_BYTES) -> Iterator[Line]:
    """The non-blank lines of a JSON Lines stream, in memory that does not grow with a line: a line longer
    than ``limit`` comes back cut to its first ``RAW_KEEP`` bytes (the rest is read and dropped, a blank one
    is skipped), and runs of blank lines are skipped by one regular-expression match each. A BOM opening the
    stream is dropped."""
    row = 0  # line number of the next line that starts
    rest = b""  # the unfinished last line of what was read (at most ``limit`` bytes)
    cut: Line | None = None  # an over-long line being read past
    blank = False  # ... with nothing but spaces so far
    bom = True
    read = getattr(fh, "read1", fh.read)  # what is there: rows before a damaged part come out first
    while True:
        chunk = fh.read(len(BOM)) if bom else read(READ_BYTES)
        eof = not chunk
        if bom:
            chunk, bom = chunk.removeprefix(BOM), False
        if cut is not None:  # read past what is left of the over-long line
            end = chunk.find(b"\n")
            part = len(chunk) if end < 0 else end
            cut.size += part
            if len(cut.data) < RAW_KEEP:
                cut.data += chunk[: min(part, RAW_KEEP - len(cut.data))]
            blank = blank and _SPACE.match(chunk, 0, part).end() == part  # type: ignore[union-attr]
            if end < 0 and not eof:
                continue
            if not blank:
                yield cut
            if end < 0:
                return
            cut, row, chunk = None, row + 1, chunk[end + 1 :]
        data = rest + chunk if rest else chunk
        if eof:
            if data.strip():  # the last line, without a newline
                yield Line(row, data, len(data))
            return
        pos, n = 0, len(data)
        while True:
            if pos < n and data[pos] not in _SPACE_BYTES:
                start = first = pos
            else:  # blank lines, or a line that opens with spaces
                first = _SPACE.match(data, pos).end()  # type: ignore[union-attr]
                nl = data.rfind(b"\n", pos, first)
                start = pos if nl < 0 else nl + 1
                row += data.count(b"\n", pos, start)
                if first == n:  # nothing but blanks left
                    break
            end = data.find(b"\n", first)
            if end < 0:
                break
            line = data[start:end]
            yield Line(row, line[:RAW_KEEP], len(line)) if len(line) > limit else Line(row, line, len(line))
            row, pos = row + 1, end + 1
        rest = data[start:]
        if len(rest) > limit:
            cut, blank, rest = Line(row, rest[:RAW_KEEP], len(rest)), first == n, b""


def _jsonl(path: Path, limit: int = MAX_ROW_BYTES) -> Iterator[RawRow]:
    with open_bytes(path) as fh:
        for line in jsonl_lines(fh, limit):
            if line.size > limit:
                yield overlong_row(line.row, line.data, line.size, limit)
            else:
                raw = _decode_object(line.data.strip(), line.row)
                raw.size = len(line.data)
                yield raw


# ------------------------------------------------------------------ JSON documents
def _read_whole(path: Path, cap: int) -> bytes:
    """The file's bytes (decompressed), if there are at most ``cap`` of them."""
    with open_bytes(path) as fh:
        data = fh.read(cap + 1)
    if len(data) <= cap:
        return data
    first = (
        data[: data.find(b"\n", 0, RAW_KEEP)].removeprefix(BOM).strip() if b"\n" in data[:RAW_KEEP] else b""
    )
    del data
    if first.startswith(b"{") and _decode_object(first, 0).error is None:
        raise _LooksLikeLines
    raise SourceError(
        f"{path}: larger than {cap / 2**20:g} MiB once decompressed; a JSON document is parsed whole "
        f"(about 3x its size in memory), so curate reads at most {cap} bytes of one. Convert it to JSON "
        "Lines (one object per line, read a batch at a time), e.g. `jq -c '.[]' FILE > FILE.jsonl`, "
        "or raise the cap with --max-json-mb"
    )


class _LooksLikeLines(Exception):
    """A large .json file whose first line is a whole JSON object: JSON Lines under another name."""


def _json(path: Path, limit: int = MAX_ROW_BYTES, cap: int = MAX_JSON_BYTES) -> Iterator[RawRow]:
    try:
        data = _read_whole(path, cap)
    except _LooksLikeLines:
        yield from _jsonl(path, limit)
        return
    if data.startswith(BOM):
        data = data[3:]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Not one JSON document: perhaps JSON Lines with a .json name.
        if data.lstrip().startswith(b"{") and b"\n" in data.strip():
            del data
            yield from _jsonl(path, limit)
            return
        raise SourceError(f"{path}: not valid JSON ({exc}); fix the file or pass --format jsonl") from exc
    value = _records(doc := value)
    if not isinstance(value, list):
        raise SourceError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    changed: dict[int, tuple[str, str, str]] = {}  # row -> (reason, field, its text)
    if _needs_exact(data, doc):  # a key given twice, or an integer made a float? find the rows, exactly
        try:
            exact = _exact(data)
        except RecursionError as exc:
            raise SourceError(f"{path}: nested too deeply to be read exactly") from exc
        records = _records(exact)
        if isinstance(exact, _Pairs) and exact.twice is not None and records[0] is not exact:
            # a key of a {"data": [...]} wrapper given twice: which list, or which version, is unknown
            raise SourceError(f"{path}: {_repeated_key_error(('', exact.twice))}")
        for i, item in enumerate(records if isinstance(records, list) else []):
            error = _exact_error(item)
            if error:
                changed[i] = (*error, _dump_exact(item))
        del exact, records
    del data, doc
    for i, item in enumerate(value):
        if i in changed:
            reason, where, text = changed[i]
            yield RawRow(i, None, text, reason, where)
        elif isinstance(item, dict):
            yield RawRow(i, item)
        else:
            yield RawRow(
                i, None, orjson.dumps(item).decode(), f"expected a JSON object, got {type(item).__name__}"
            )


def _records(value: Any) -> Any:
    """The list of records of a JSON document: the array itself, or a single object, or the one list of
    objects of a ``{"data": [...]}``-style wrapper."""
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        return lists[0] if len(lists) == 1 and len(value) <= 3 else [value]
    return value


# ------------------------------------------------------------------ Parquet
def _parquet(path: Path, batch_size: int, limit: int = MAX_ROW_BYTES) -> Iterator[RawRow]:
    row = 0
    for batch in parquet_record_batches(path, batch_size):
        yield from parquet_rows(batch, row, limit)
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


def parquet_rows(
    batch: pa.RecordBatch | pa.Table, first_row: int, limit: int = MAX_ROW_BYTES
) -> Iterator[RawRow]:
    """The rows of a Parquet batch as RawRows. A string that is not UTF-8 (Parquet writers do not
    check) makes its row an error row that names the column, instead of stopping the file; so does a row
    whose text is over ``limit`` bytes (not made into Python objects: Arrow has already decompressed it,
    but it is not copied again)."""
    for start in range(0, batch.num_rows, PARQUET_ROWS_AT_ONCE):
        part = batch.slice(start, PARQUET_ROWS_AT_ONCE)
        columns = column_text_bytes(part)
        sizes = sum(columns.values(), np.zeros(part.num_rows, dtype=np.int64))
        if (sizes > limit).any():
            for i in range(part.num_rows):
                row = first_row + start + i
                yield (
                    _too_large({name: int(c[i]) for name, c in columns.items()}, row, limit)
                    if sizes[i] > limit
                    else _parquet_row(part.slice(i, 1), row)
                )
            continue
        try:
            rows = part.to_pylist()
        except UnicodeDecodeError:
            for i in range(part.num_rows):
                yield _parquet_row(part.slice(i, 1), first_row + start + i)
            continue
        for i, item in enumerate(rows):
            yield RawRow(first_row + start + i, item)


def text_bytes(table: pa.RecordBatch | pa.Table) -> np.ndarray:
    """Bytes of text (strings and binaries, nested ones included) in each row of ``table``, by Arrow."""
    return sum(column_text_bytes(table).values(), np.zeros(table.num_rows, dtype=np.int64))


def column_text_bytes(table: pa.RecordBatch | pa.Table) -> dict[str, np.ndarray]:
    """``text_bytes`` of each column (chunk by chunk: combining the chunks would copy the text)."""
    out = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        sizes = [_value_bytes(c) for c in chunks]
        out[name] = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    return out


def _value_bytes(values: pa.Array) -> np.ndarray:
    t, n = values.type, len(values)
    if t in (pa.string_view(), pa.binary_view()):  # no length kernel for views
        values = values.cast(pa.large_string() if t == pa.string_view() else pa.large_binary())
        t = values.type
    if pa.types.is_dictionary(t):
        return _value_bytes(values.dictionary)[values.indices.fill_null(0).to_numpy(zero_copy_only=False)]
    if t in (
        pa.string(),
        pa.large_string(),
        pa.binary(),
        pa.large_binary(),
        pa.string_view(),
        pa.binary_view(),
    ):
        return pc.binary_length(values).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_map(t):  # no flatten kernel for maps (and list_parent_indices aborts the process on one)
        offsets = values.offsets.to_numpy(zero_copy_only=False)
        entries = values.values  # every key/value entry of the array, not only this slice's
        sums = np.concatenate([[0], np.cumsum(_value_bytes(entries))]) if len(entries) else np.zeros(1)
        return (sums[offsets[1:]] - sums[offsets[:-1]]).astype(np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        child = values.flatten()
        if not len(child):
            return np.zeros(n, dtype=np.int64)
        parents = pc.list_parent_indices(values).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=_value_bytes(child), minlength=n).astype(np.int64)
    if pa.types.is_struct(t):
        out = np.zeros(n, dtype=np.int64)
        for child in values.flatten():
            out += _value_bytes(child)
        return out
    return np.zeros(n, dtype=np.int64)


def _too_large(sizes: dict[str, int], row: int, limit: int) -> RawRow:
    """The error row of a Parquet row with more than ``limit`` bytes of text (``sizes``: by column)."""
    big = [f"{name!r} ({size} bytes)" for name, size in sizes.items() if size > RAW_KEEP] or [
        repr(max(sizes))
    ]
    return RawRow(
        row,
        None,
        f"[not read: its text is in column(s) {', '.join(big)}; see row {row} of the source file]",
        f"row of {sum(sizes.values())} bytes of text is larger than the {limit}-byte limit; not parsed",
    )


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


# ------------------------------------------------------------------ CSV
#: Characters that Python's "surrogateescape" decoding makes of bytes that are not UTF-8.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")


class _CsvLines:
    """The physical lines of a CSV text for ``csv.reader``, remembering those of the record being read (its
    raw text, for quarantine) and never holding more than ``limit`` characters of one line: the rest of a
    longer line is read and dropped, and ``csv`` gets a stand-in with the same parity of quote characters
    (so a quoted field still ends where it ends); the record is then quarantined."""

    def __init__(self, text: io.TextIOBase, limit: int) -> None:
        self.text, self.limit = text, limit
        self.delimiter = ","
        self.line = 0  # physical lines read
        self.last: str | None = None  # the last line read whole (not over-long)
        self.again: str | None = None  # a line to read again (``unread``)
        self.start()

    def start(self) -> None:
        """A new record starts with the next line."""
        self.held: list[str] = []
        self.kept = 0  # characters in held
        self.first = self.line + 1
        self.longest = 0  # length of its longest over-long line (0: none)
        self.not_utf8 = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if self.again is not None:
            line, self.again = self.again, None
        else:
            line = self.text.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.line += 1
        self.last = None
        if len(line) > self.limit and line[-1] not in "\r\n":
            size, quotes = len(line), line.count('"')
            self._hold(line[:RAW_KEEP])
            while True:
                more = self.text.readline(self.limit + 1)
                size, quotes = size + len(more), quotes + more.count('"')
                if not more or more[-1] in "\r\n":
                    break
            self.longest = max(self.longest, size)
            return ('"' if quotes % 2 else "") + (more[-1:] if more else "")
        self._hold(line)
        self.last = line
        return line

    def _hold(self, line: str) -> None:
        if _NOT_UTF8.search(line):
            self.not_utf8 = True
        self.held_last = self.kept < RAW_KEEP
        if self.held_last:
            self.held.append(line[: RAW_KEEP - self.kept])
            self.kept += len(self.held[-1])

    def unread(self) -> bool:
        """After a CSV error on a record's later line: if the quote that broke it opens a field of that line
        (at its start, or after a comma), the quote was the next record's and an earlier one was never
        closed: give the line back, so that the broken record is the lines before it and the next record
        is read whole. False (nothing given back) otherwise."""
        line = self.last
        if line is None or self.line <= self.first:
            return False
        quote = line.find('"')
        if quote < 0 or (quote > 0 and line[quote - 1] != self.delimiter):
            return False
        if self.held_last:
            self.kept -= len(self.held.pop())
        self.again, self.line = line, self.line - 1
        return True

    def raw(self) -> str:
        text = "".join(self.held).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return text if self.kept < RAW_KEEP else f"{text}... [see lines {self.first}-{self.line} of the file]"


def _csv(path: Path, limit: int = MAX_ROW_BYTES) -> Iterator[RawRow]:
    """CSV records as rows of {header: text}. Parsed strictly, so a quote opened and never closed (which
    runs the field on into the lines after it) is an error row holding those lines, not a merged record;
    so is a record with bytes that are not UTF-8, more fields than the header, or a line over ``limit``."""
    csv.field_size_limit(limit)
    with open_bytes(path) as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        lines = _CsvLines(text, limit)
        lines.delimiter = _csv_delimiter(lines)
        records = csv.reader(lines, strict=True, delimiter=lines.delimiter)
        header: list[str] = []
        try:
            while not header:
                header = next(records)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SourceError(f"{path}: the header (line {lines.line}) is not valid CSV: {exc}") from None
        if lines.not_utf8 or lines.longest:
            raise SourceError(f"{path}: the header (line {lines.line}) is not UTF-8 text of a normal length")
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise SourceError(
                f"{path}: the header repeats the column(s) {', '.join(map(repr, repeated))}; "
                "rename them so that no column hides another"
            )
        row = 0
        while True:
            lines.start()
            try:
                fields = next(records)
            except StopIteration:
                return
            except csv.Error as exc:
                if lines.unread():
                    why = f"the quote opened on line {lines.first} is not closed"
                else:
                    why = f"{exc}; a quote that is never closed runs into the lines after it"
                span = (
                    f"lines {lines.first}-{lines.line}" if lines.line > lines.first else f"line {lines.first}"
                )
                yield RawRow(row, None, lines.raw(), f"malformed CSV ({span}): {why}", size=lines.kept)
                row += 1
                continue
            if not fields and not lines.longest:
                continue  # a blank line
            raw = _csv_row(header, fields, lines, row, limit)
            raw.size = lines.kept
            yield raw
            row += 1


def _csv_delimiter(lines: _CsvLines) -> str:
    """The field separator: a comma, unless the header line (the first line not blank) is one field with
    commas but more with a tab, ``;`` or ``|`` (TSV; the CSV of a locale whose decimal mark is a comma). The
    line is given back to be read again as the header."""
    line = ""
    for line in lines:
        if line.strip():
            break
    longest = lines.longest  # an over-long header line stays over-long when read again
    lines.again, lines.line = (line, lines.line - 1) if line else (None, lines.line)
    lines.start()
    lines.longest = longest
    try:
        if not line or len(next(csv.reader([line]))) > 1:
            return ","
        fields = {d: len(next(csv.reader([line], delimiter=d))) for d in CSV_DELIMITERS}
    except (csv.Error, StopIteration):
        return ","
    best = max(CSV_DELIMITERS, key=lambda d: fields[d])
    return best if fields[best] > 1 else ","


def _csv_row(header: list[str], fields: list[str], lines: _CsvLines, row: int, limit: int) -> RawRow:
    if lines.longest:
        return RawRow(
            row,
            None,
            lines.raw(),
            f"CSV line of {lines.longest} characters is longer than the {limit}-character limit; not parsed",
        )
    if lines.not_utf8:
        bad = [h for h, v in zip(header, fields, strict=False) if _NOT_UTF8.search(v)] or [
            "(outside the fields)"
        ]
        return RawRow(row, None, lines.raw(), f"invalid UTF-8 in column {', '.join(map(repr, bad))}")
    if len(fields) > len(header):
        value = dict(zip(header, fields, strict=False))
        extra = fields[len(header) :]
        return RawRow(
            row,
            None,
            orjson.dumps({**value, "_extra": extra}).decode(),
            f"CSV row has {len(extra)} more fields than the header",
        )
    value: dict[str, Any] = dict(zip(header, fields, strict=False))
    for name in header[len(fields) :]:  # as csv.DictReader: a short row's missing fields are null
        value[name] = None
    return RawRow(row, value)
