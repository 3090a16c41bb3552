"""JSONL batches read in byte blocks, parsed by Arrow where that is provably what the line path gives.

``read_batches(path, batch_rows, schema)`` yields exactly the batches that
``pipeline._batches(sources.read_rows(path, "jsonl"), batch_rows)`` yields (same
rows, same row numbers, same batch boundaries), but a batch whose lines are
all plain objects comes back as an ``ArrowBlock``: the columns of the reader's
``schema`` (strings, or lists of {role, content} strings) parsed by
``pyarrow.json`` with that explicit schema, no Python object per row.

Blank lines are squeezed out of the buffer as the bytes are scanned (vectorised,
a megabyte at a time; their numbers still count, so a block carries the row number
of each line), and a line longer than the row limit keeps only its first
``RAW_KEEP`` bytes while the rest is read and dropped: memory follows the batch's
rows, never the file's blank lines or its longest line. A batch holding such a
line goes line by line, where it is the line path's error row.

A batch takes the Arrow path only when every check below holds; otherwise it
is decoded line by line (``sources.decode_line``, the exact path), so bad lines
are quarantined with their row number and raw text as before:

- every line starts with ``{`` and ends with ``}`` (no whitespace-padded line,
  no CR, so ``bytes.strip`` is a no-op);
- ``pyarrow.json`` parses the block strictly: a repeated key, a value of another
  type (a number, bool, object or array where a string is due, ...), a raw control
  character, a bad escape or lone surrogate is an error (it never converts), and a
  field inside the reader's columns that ``schema`` lacks changes their type;
- it returns one row per line (two objects on one line would give more);
- the strings are valid UTF-8 (``Table.validate(full=True)``);
- none of the top-level fields besides ``schema``'s (ids, sources, scores: each
  row's ``meta``) is one the reader reads, and Arrow can type them. Their meta is
  made from Arrow's values when these turn back into the JSON values the line path
  reads (``_same_json``: strings, integers, bools, lists and objects of them with no
  null anywhere, as a key missing in a row or an object reads as null, and no float
  that may have been written as an integer); else from each row's own line, as the
  line path makes it (``_line_meta``).

A row whose field is missing or null is left to the row path: ``ArrowBlock.raw``
decodes that one line exactly as the line path does, so its quarantine reason is unchanged.

``read_parquet_batches`` does the same for Parquet: the batches of the row path
(``pipeline._batches(sources.read_rows(path, "parquet"), batch_rows)``), each
a ``ParquetBlock`` (its Arrow columns, no Python object per row) when the file
has the columns of ``schema``, of the same shapes (any string, list and struct
field order), the batch is valid UTF-8, and its other columns (each row's
``meta``, made as the row path makes it) are none the reader reads.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj
import pyarrow.parquet as pq

from curation.ingest.readers.base import RowError, extra_meta, meta_json
from curation.ingest.sources import (
    BATCH_BYTES,
    BOM,
    MAX_ROW_BYTES,
    RAW_KEEP,
    HashingFile,
    RawRow,
    decode_line,
    open_bytes,
    overlong_row,
    parquet_record_batches,
    parquet_rows,
    text_bytes,
)

#: Bytes read from the file at a time (a batch is cut at whole lines, whatever the chunk).
CHUNK_BYTES = 4 << 20
#: Bytes scanned for newlines at a time: the arrays of line offsets stay small even for a chunk of
#: nothing but newlines (4 MB of them would be 4M lines, 96 MB of offsets at once).
SCAN_BYTES = 1 << 20
_LBRACE, _RBRACE, _NL = ord("{"), ord("}"), ord("\n")
#: The bytes ``bytes.strip()`` removes: a line of nothing else is blank.
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(b" \t\n\r\x0b\x0c")] = True


@dataclass
class ArrowBatch:
    """A batch of rows ``first_row .. first_row + len - 1`` whose reader fields Arrow has in ``table``."""

    first_row: int
    table: pa.Table
    #: each row's ``meta`` as the row path writes it (JSON), when the rows have fields besides ``table``'s
    meta: list[str] | None = field(default=None, kw_only=True)

    def __len__(self) -> int:
        return self.table.num_rows

    def row_numbers(self) -> np.ndarray:
        return np.arange(self.first_row, self.first_row + len(self), dtype=np.int64)

    def raw(self, i: int) -> RawRow:
        """Row ``i`` exactly as the row path reads it."""
        raise NotImplementedError


@dataclass
class ArrowBlock(ArrowBatch):
    """JSONL rows, one per line, with the lines they were parsed from (``rows``: their line numbers, which
    skip the blank lines between them)."""

    data: memoryview  # the batch's lines (not changed after the batch is made)
    starts: np.ndarray
    ends: np.ndarray
    rows: np.ndarray
    limit: int = MAX_ROW_BYTES

    def row_numbers(self) -> np.ndarray:
        return self.rows

    def raw(self, i: int) -> RawRow:
        line = bytes(self.data[int(self.starts[i]) : int(self.ends[i])])
        return decode_line(line, int(self.rows[i]), self.limit)


@dataclass
class ParquetBlock(ArrowBatch):
    """Parquet rows; ``table`` holds the reader's columns, cast to its schema."""

    read: pa.Table  # as read from the file (the row path's values, struct fields in the file's order)

    def raw(self, i: int) -> RawRow:
        return RawRow(self.first_row + i, self.read.slice(i, 1).to_pylist()[0])


Batch = list[RawRow] | ArrowBatch
Buffer = bytes | bytearray | memoryview | np.ndarray


def read_batches(
    path: Path,
    batch_rows: int,
    schema: pa.Schema,
    reads: frozenset[str] = frozenset(),
    digest: Any = None,
    parse_threads: bool = False,
    limit: int = MAX_ROW_BYTES,
    batch_bytes: int = BATCH_BYTES,
) -> Iterator[Batch]:
    """Batches of ``batch_rows`` rows of a JSONL(.gz) file; see the module docstring. Fields besides
    ``schema``'s become each row's ``meta``, unless the reader ``reads`` one of them (then line by line).
    ``digest`` (a hashlib object), if given, has hashed the file's bytes (as stored) when the last batch is
    taken. ``parse_threads``: parse each batch on Arrow's thread pool (for a caller that does nothing
    else meanwhile; when the batches are prepared, validated and written on other threads, one more
    pool only competes with them for the cores). A line over ``limit`` bytes is an error row, of which
    only the first ``RAW_KEEP`` bytes are ever held, as in the line path; a batch ends early where its lines
    reach ``batch_bytes``, as the line path's ``_batches`` ends it."""
    tap = HashingFile(path, digest) if digest is not None else None
    with open_bytes(path, tap) as fh:
        lines = _Lines(limit)
        head = fh.read(len(BOM))
        lines.append(b"" if head == BOM else head)  # as the line path: a BOM is not content
        eof = False
        while True:
            while not eof and lines.rows < batch_rows and lines.held < batch_bytes:
                if not lines.read(fh):
                    eof = True
                    lines.finish()
            batch = lines.take(batch_rows, batch_bytes)
            if batch is None:
                if tap is not None:
                    tap.read_to_end()  # what a gzip reader leaves after its last member
                return
            data, s, e, rows, cut = batch
            block = None if cut else _arrow_block(data, s, e, rows, schema, reads, parse_threads, limit)
            if block is not None:
                yield block
            else:
                yield [
                    overlong_row(r, bytes(data[a:b]), cut[r], limit)
                    if r in cut
                    else decode_line(bytes(data[a:b]), r, limit)
                    for a, b, r in zip(s.tolist(), e.tolist(), rows.tolist(), strict=True)
                ]


@dataclass
class _Cut:
    """An over-long line being read past: its first bytes stay in the buffer, the rest is dropped."""

    row: int
    size: int  # bytes of it so far
    kept: int  # bytes of it in the buffer (at most RAW_KEEP)
    blank: bool  # nothing but spaces so far


class _Lines:
    """The bytes read so far and the non-blank lines found in them, scanned once as each chunk arrives.

    Chunks are read straight into the batch's buffer (``readinto``, outside the GIL): no bytes object
    per chunk and no copy while holding the GIL. Each batch gets a buffer of its own, sized after the
    last batch, which it keeps (``ArrowBlock.data`` is a view of it). Blank lines are squeezed out of the
    buffer as they are found (their numbers still count), and a line longer than ``limit`` keeps only
    its first ``RAW_KEEP`` bytes (``cut`` holds its length), so memory follows the batch's rows, not the
    file's lines or the longest line."""

    def __init__(self, limit: int = MAX_ROW_BYTES) -> None:
        self.buf = np.empty(4 * CHUNK_BYTES, dtype=np.uint8)  # uninitialised: pages are touched by the read
        self.size = 0  # bytes of buf in use
        self.line = 0  # line number of the line that starts at ``open``
        self.open = 0  # offset where the unfinished line starts
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (starts, ends, rows)
        self.rows = 0  # lines in parts
        self.held = 0  # bytes of the lines in parts (without their newlines)
        self.limit = limit
        self.cut: dict[int, int] = {}  # row -> length in bytes, of the over-long lines in parts
        self.skip: _Cut | None = None

    def _room(self, n: int) -> memoryview:
        """The next ``n`` free bytes of the buffer (grown if needed)."""
        need = self.size + n
        if need > len(self.buf):
            grown = np.empty(max(need, 2 * len(self.buf)), dtype=np.uint8)
            grown[: self.size] = self.buf[: self.size]
            self.buf = grown
        return memoryview(self.buf)[self.size : need]

    def read(self, fh: io.BufferedIOBase) -> bool:
        """Read the next chunk of ``fh`` into the buffer; False at the end of the file."""
        with self._room(CHUNK_BYTES) as room:
            n = fh.readinto(room)
        if n:
            self._scan(n)
        return bool(n)

    def append(self, more: bytes) -> None:
        with self._room(len(more)) as room:
            room[:] = more
        self._scan(len(more))

    def _scan(self, n: int) -> None:
        """Find the lines ended in the ``n`` bytes just added, a slice at a time."""
        end = self.size + n
        while self.size < end:
            stop = min(self.size + SCAN_BYTES, end)
            end -= self._scan_slice(stop, end)

    def _drop(self, lo: int, hi: int, end: int) -> int:
        """Remove bytes ``lo:hi`` of the buffer (what follows, up to ``end``, moves down); their number."""
        if hi > lo:
            self.buf[lo : end - (hi - lo)] = self.buf[hi:end]
        return hi - lo

    def _scan_slice(self, stop: int, end: int) -> int:
        """Scan ``size:stop`` (bytes up to ``end`` are read but not scanned yet); returns the bytes removed."""
        base = removed = 0
        if self.skip is not None:
            base, removed, stop, end = self._skip_slice(stop, end)
            if self.skip is not None:
                return removed
        base = self.size
        newline = self.buf[base:stop] == _NL
        many = int(np.count_nonzero(newline))
        if many > (stop - base) // 8 and _IS_SPACE[self.buf[base:stop]].all():
            return removed + self._blank_slice(newline, stop, end)
        nl = np.flatnonzero(newline).astype(np.int64) + base
        if len(nl):
            starts = np.empty(len(nl), dtype=np.int64)
            starts[0] = self.open
            starts[1:] = nl[:-1] + 1
            rows = np.arange(self.line, self.line + len(nl), dtype=np.int64)
            self.line += len(nl)
            keep = _nonblank(self.buf, starts, nl)
            if keep.all():
                self._add(starts, nl, rows)
                self.open = int(nl[-1]) + 1
            else:  # squeeze the blank lines out: the kept lines (with their newlines) move down
                lengths = (nl - starts + 1)[keep]
                last = int(nl[-1]) + 1
                region = self.buf[self.open : last]
                squeezed = region[np.repeat(keep, nl - starts + 1)]
                region[: len(squeezed)] = squeezed
                new_starts = self.open + np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
                if len(lengths):
                    self._add(new_starts, new_starts + lengths - 1, rows[keep])
                gone = self._drop(self.open + len(squeezed), last, end)
                removed, stop, end = removed + gone, stop - gone, end - gone
                self.open += len(squeezed)
        self.size = stop
        if stop - self.open > self.limit:  # the unfinished line is over-long: keep its head only
            blank = not (~_IS_SPACE[self.buf[self.open : stop]]).any()
            self.skip = _Cut(self.line, stop - self.open, min(RAW_KEEP, stop - self.open), blank)
            gone = self._drop(self.open + self.skip.kept, stop, end)
            removed += gone
            self.size = stop - gone
        return removed

    def _blank_slice(self, newline: np.ndarray, stop: int, end: int) -> int:
        """Scan ``size:stop``, all spaces and newlines (``newline`` marks these): only the line it ends may
        hold anything; the other lines are dropped without an offset apiece. Returns the bytes removed."""
        base = self.size
        first = base + int(np.argmax(newline))
        last = base + len(newline) - 1 - int(np.argmax(newline[::-1]))
        row = self.line
        self.line += int(np.count_nonzero(newline))
        if (~_IS_SPACE[self.buf[self.open : base]]).any():  # the unfinished line ends here, not blank
            self._add(*(np.array([x], dtype=np.int64) for x in (self.open, first, row)))
            self.open = first + 1
        gone = self._drop(self.open, last + 1, end)
        self.size = stop - gone
        return gone

    def _skip_slice(self, stop: int, end: int) -> tuple[int, int, int, int]:
        """Read past the over-long line in ``size:stop``; (base, removed, stop, end) after it."""
        skip = self.skip
        assert skip is not None
        base = self.size
        found = np.flatnonzero(self.buf[base:stop] == _NL)
        seg = int(found[0]) if len(found) else stop - base  # bytes of the line in this slice
        skip.size += seg
        skip.blank = skip.blank and not (~_IS_SPACE[self.buf[base : base + seg]]).any()
        keep = min(seg, RAW_KEEP - skip.kept)
        skip.kept += keep
        removed = self._drop(base + keep, base + seg, end)
        stop, end = stop - removed, end - removed
        self.size = base + keep
        if not len(found):
            self.size = stop
            return base, removed, stop, end
        # the line ends at the newline now at self.size
        if skip.blank:
            gone = self._drop(self.open, self.size + 1, end)
            removed, stop, end = removed + gone, stop - gone, end - gone
        else:
            row = np.array([skip.row], dtype=np.int64)
            self._add(np.array([self.open], dtype=np.int64), np.array([self.size], dtype=np.int64), row)
            self.cut[skip.row] = skip.size
            self.open = self.size + 1
        self.size = self.open
        self.line += 1
        self.skip = None
        return self.open, removed, stop, end

    def _add(self, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> None:
        self.parts.append((starts, ends, rows))
        self.rows += len(starts)
        self.held += int(self._weights(starts, ends).sum())

    def _weights(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Bytes each line counts for in a batch, as in the line path: an over-long line its first
        ``RAW_KEEP`` (all that is held of it once cut)."""
        sizes = ends - starts
        return np.where(sizes > self.limit, np.minimum(sizes, RAW_KEEP), sizes)

    def finish(self) -> None:
        """At EOF: the last line, if it has no newline, is a line too (unless it is blank)."""
        skip, self.skip = self.skip, None
        if skip is not None:
            if not skip.blank:
                self._add(*(np.array([x], dtype=np.int64) for x in (self.open, self.size, skip.row)))
                self.cut[skip.row] = skip.size
            else:
                self.size = self.open
        elif self.open < self.size and (~_IS_SPACE[self.buf[self.open : self.size]]).any():
            self._add(*(np.array([x], dtype=np.int64) for x in (self.open, self.size, self.line)))
        else:
            self.size = self.open
        self.open = self.size

    def take(
        self, batch_rows: int, batch_bytes: int = BATCH_BYTES
    ) -> tuple[memoryview, np.ndarray, np.ndarray, np.ndarray, dict[int, int]] | None:
        """The first ``batch_rows`` lines (or all), fewer if their bytes reach ``batch_bytes`` first, as
        (data, starts, ends, rows, {row: length of the over-long ones})."""
        if not self.parts:
            return None
        starts, ends, rows = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        held = np.cumsum(self._weights(starts, ends))
        n = min(batch_rows, len(starts), int(np.searchsorted(held, batch_bytes)) + 1)
        cut = min(int(ends[n - 1]) + 1, self.size)  # the last line may have no newline
        data, size = self.buf, self.size
        # the batch keeps this buffer; the next one starts in a new one, about this batch's size
        self.buf = np.empty(max(cut, size - cut) + 2 * CHUNK_BYTES, dtype=np.uint8)
        self.buf[: size - cut] = data[cut:size]
        self.size = size - cut
        self.open = max(self.open - cut, 0)
        self.parts = [(starts[n:] - cut, ends[n:] - cut, rows[n:])] if n < len(starts) else []
        self.rows = len(starts) - n
        self.held = int(held[-1] - held[n - 1])
        last = int(rows[n - 1])
        over = {r: size for r, size in self.cut.items() if r <= last}
        for r in over:
            del self.cut[r]
        return memoryview(data)[:cut], starts[:n], ends[:n], rows[:n], over


def _plain(data: Buffer, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines that start with ``{`` and end with ``}`` (so they are neither blank nor padded)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nonempty = ends > starts
    ok = np.zeros(len(starts), dtype=bool)
    ok[nonempty] = (buf[starts[nonempty]] == _LBRACE) & (buf[ends[nonempty] - 1] == _RBRACE)
    return ok


def _nonblank(data: Buffer, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines the line path turns into a row (``line.strip()`` is not empty), without a Python step per line."""
    out = _plain(data, starts, ends)
    other = np.flatnonzero(~out)
    if len(other):
        buf = np.frombuffer(data, dtype=np.uint8)
        lo, hi = int(starts[other[0]]), int(ends[other[-1]])
        # non-space bytes before each offset: a line is blank when its start and end count the same
        count = np.zeros(hi - lo + 1, dtype=np.int32)
        np.cumsum(~_IS_SPACE[buf[lo:hi]], dtype=np.int32, out=count[1:])
        out[other] = count[ends[other] - lo] > count[starts[other] - lo]
    return out


def _arrow_block(
    data: Buffer,
    starts: np.ndarray,
    ends: np.ndarray,
    rows: np.ndarray,
    schema: pa.Schema,
    reads: frozenset[str],
    threads: bool = False,
    limit: int = MAX_ROW_BYTES,
) -> ArrowBlock | None:
    if not _plain(data, starts, ends).all() or int((ends - starts).max()) > limit:
        return None  # the line path decides
    body = pa.py_buffer(memoryview(data)[: int(ends[-1])])  # no copy; starts[0] == 0
    longest = int((ends - starts).max())
    opts = paj.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="infer", newlines_in_values=False
    )
    # 1 MB blocks parse fastest here (cache); a block must hold the longest line. Arrow's pool only when
    # asked and it has more than one thread: handing blocks to a single worker only adds thread switches.
    read = paj.ReadOptions(
        use_threads=threads and pa.cpu_count() > 1, block_size=max(1 << 20, 2 * longest + 2)
    )
    try:
        table = paj.read_json(pa.BufferReader(body), read_options=read, parse_options=opts)
        table.validate(full=True)  # the parser does not check UTF-8 inside strings
    except (pa.ArrowException, ValueError):
        return None
    others = [n for n in table.column_names if n not in schema.names]
    if table.num_rows != len(starts) or set(others) & reads:
        return None
    fields, table = table.select(others), table.select(schema.names)
    if table.schema != schema:
        return None
    meta = None
    if others:
        same = all(_same_json(c) for c in fields.columns)
        meta = [meta_json(r) for r in fields.to_pylist()] if same else _line_meta(data, starts, ends, reads)
        if meta is None:
            return None
    return ArrowBlock(int(rows[0]), table, data, starts, ends, rows, limit, meta=meta)


def _line_meta(data: Buffer, starts: np.ndarray, ends: np.ndarray, reads: frozenset[str]) -> list[str] | None:
    """Each row's meta made from its own line, as the line path makes it (``decode_line``, ``extra_meta``,
    ``meta_json``), for other fields whose Arrow values are not the line path's (nulls, missing keys,
    whole-number floats, timestamps...); None if the line path would refuse a line."""
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        raw = decode_line(bytes(data[s:e]), 0)
        if raw.error is not None:
            return None
        try:
            out.append(meta_json(extra_meta(raw.value, reads)))  # type: ignore[arg-type]
        except RowError:
            return None
    return out


_MAX_NESTING = 64


def _same_json(column: pa.ChunkedArray) -> bool:
    """The values of a field Arrow inferred are the JSON values the line path reads (as Python objects).

    Not when a null is anywhere in it (a missing key and ``null`` both read as null, in a row or in an
    object), for timestamps (inferred from strings) or empty objects, or for a float that is a whole
    number or not finite (``1`` and ``1.0`` in one field both read as 1.0), nor for values nested deeper
    than ``_MAX_NESTING`` levels (Arrow parses thousands; the line path quarantines what orjson refuses)."""
    return _same_values(column.combine_chunks(), _MAX_NESTING)


def _same_values(values: pa.Array, depth: int) -> bool:
    t = values.type
    if values.null_count or depth <= 0:
        return False
    if pa.types.is_list(t):
        return _same_values(values.flatten(), depth - 1)
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(_same_values(child, depth - 1) for child in values.flatten())
    if pa.types.is_float64(t):
        whole = pc.or_kleene(pc.is_nan(values), pc.equal(pc.floor(values), values))
        return not len(values) or not pc.any(whole).as_py()
    return pa.types.is_string(t) or pa.types.is_int64(t) or pa.types.is_boolean(t)


# ------------------------------------------------------------------ Parquet
def read_parquet_batches(
    path: Path,
    batch_rows: int,
    schema: pa.Schema,
    reads: frozenset[str] = frozenset(),
    limit: int = MAX_ROW_BYTES,
) -> Iterator[Batch]:
    """Batches of ``batch_rows`` rows of a Parquet file; see the module docstring. Columns besides
    ``schema``'s become each row's ``meta``, unless the reader ``reads`` one of them (then row by row);
    a column of ``schema`` the file lacks is null, as a missing JSON field is. A batch with a row of more
    than ``limit`` bytes of text goes row by row (where that row is an error row)."""
    file_schema = pq.read_schema(path)
    others = [n for n in file_schema.names if n not in schema.names]
    fits = not set(others) & reads and all(
        _same_shape(file_schema.field(f.name).type, f.type) for f in schema if f.name in file_schema.names
    )
    row = 0
    for table in _exactly(parquet_record_batches(path, batch_rows), batch_rows):
        fit = fits and bool((text_bytes(table) <= limit).all())
        block = _parquet_block(table, row, schema, others) if fit else None
        yield block if block is not None else list(parquet_rows(table, row, limit))
        row += table.num_rows


def _same_shape(got: pa.DataType, want: pa.DataType) -> bool:
    """``got`` casts to ``want`` value for value: strings of any width, lists of any kind, structs with the
    same field names in any order (a number would cast to a string, but the row path sees a number)."""
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_string_view(got)
    if pa.types.is_list(want):
        lists = pa.types.is_list(got) or pa.types.is_large_list(got) or pa.types.is_list_view(got)
        return lists and _same_shape(got.value_type, want.value_type)
    if pa.types.is_struct(want):
        names = [want.field(i).name for i in range(want.num_fields)]
        return (
            pa.types.is_struct(got)
            and sorted(got.field(i).name for i in range(got.num_fields)) == sorted(names)
            and all(_same_shape(got.field(n).type, want.field(n).type) for n in names)
        )
    return got == want


def _exactly(batches: Iterator[pa.RecordBatch], n: int) -> Iterator[pa.Table]:
    """Tables of exactly ``n`` rows (the last one may be shorter), whatever the record batches' sizes."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        while count >= n:
            table = pa.Table.from_batches(held)
            yield table.slice(0, n)
            rest = table.slice(n)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held)


def _parquet_block(table: pa.Table, row: int, schema: pa.Schema, others: list[str]) -> ParquetBlock | None:
    try:
        columns = [
            table[f.name] if f.name in table.column_names else pa.nulls(len(table), f.type) for f in schema
        ]
        cast = pa.Table.from_arrays(columns, names=schema.names).cast(schema)
        cast.validate(full=True)  # Parquet readers do not check UTF-8 inside strings
        meta = [meta_json(r) for r in table.select(others).to_pylist()] if others else None
    except (pa.ArrowException, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return ParquetBlock(row, cast.combine_chunks(), table, meta=meta)
