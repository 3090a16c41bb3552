"""JSONL batches read in byte blocks, parsed by Arrow where that is provably what the line path gives.

``read_batches(path, batch_rows, fields)`` yields exactly the batches that
``pipeline._batches(sources.read_rows(path, "jsonl"), batch_rows)`` yields (same
rows, same row numbers, same batch boundaries), but a batch whose lines are
all plain objects comes back as an ``ArrowBlock``: the ``fields`` columns
parsed by ``pyarrow.json`` with an explicit string schema, no Python object per row.

A batch takes the Arrow path only when every check below holds; otherwise it
is decoded line by line (``sources.decode_line``, the exact path), so bad lines
are quarantined with their row number and raw text as before:

- every line starts with ``{`` and ends with ``}`` (no blank or whitespace-only
  line, no CR, so line i is row ``first_row + i`` and ``bytes.strip`` is a no-op);
- ``pyarrow.json`` parses the block strictly: a field outside ``fields``, a
  repeated key, a non-string value (number, bool, object, array), a raw control
  character, a bad escape or lone surrogate is an error (it never converts);
- it returns one row per line (two objects on one line would give more);
- the strings are valid UTF-8 (``Table.validate(full=True)``).

A row whose field is missing or null is left to the row path: ``ArrowBlock.raw``
decodes that one line exactly as the line path does, so its quarantine reason is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json as paj

from curation.ingest.sources import BOM, MAX_ROW_BYTES, RawRow, decode_line, open_bytes

#: Bytes read from the file at a time (a batch is cut at whole lines, whatever the chunk). 4 MB chunks
#: are reused by the allocator (fewer fresh pages): half the page faults and ~15 % less CPU than 32 MB here.
CHUNK_BYTES = 4 << 20
_LBRACE, _RBRACE, _NL = ord("{"), ord("}"), ord("\n")


@dataclass
class ArrowBlock:
    """A batch of rows ``first_row .. first_row + len - 1``, one per line, with the parsed columns."""

    first_row: int
    data: bytearray  # the batch's lines (not changed after the batch is made)
    starts: np.ndarray
    ends: np.ndarray
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def row_numbers(self) -> np.ndarray:
        return np.arange(self.first_row, self.first_row + len(self), dtype=np.int64)

    def raw(self, i: int) -> RawRow:
        """Row ``i`` decoded from its line exactly as the line path decodes it."""
        return decode_line(bytes(self.data[int(self.starts[i]) : int(self.ends[i])]), self.first_row + i)


Batch = list[RawRow] | ArrowBlock


def read_batches(path: Path, batch_rows: int, fields: Sequence[str]) -> Iterator[Batch]:
    """Batches of ``batch_rows`` rows of a JSONL(.gz) file; see the module docstring."""
    schema = pa.schema([(f, pa.string()) for f in fields])
    with open_bytes(path) as fh:
        lines = _Lines()
        head = fh.read(len(BOM))
        lines.extend(b"" if head == BOM else head)  # as the line path: a BOM is not content
        eof = False
        while True:
            while not eof and lines.rows < batch_rows:
                more = fh.read(CHUNK_BYTES)
                if not more:
                    eof = True
                    lines.finish()
                    break
                lines.extend(more)
            batch = lines.take(batch_rows)
            if batch is None:
                return
            data, s, e, row, nonblank = batch
            block = _arrow_block(data, s, e, row, nonblank, schema)
            if block is not None:
                yield block
            else:
                yield [
                    decode_line(bytes(data[a:b]), row + i)
                    for i, (a, b) in enumerate(zip(s.tolist(), e.tolist(), strict=True))
                    if nonblank[i]
                ]


class _Lines:
    """The bytes read so far and the lines found in them, scanned once as each chunk arrives."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.row = 0  # line number of data[0]
        self.open = 0  # offset where the first unterminated line starts
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (starts, ends, nonblank)
        self.rows = 0  # nonblank lines in parts

    def _add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        nonblank = _nonblank(self.data, starts, ends)
        self.parts.append((starts, ends, nonblank))
        self.rows += int(nonblank.sum())

    def extend(self, more: bytes) -> None:
        base = len(self.data)
        self.data += more
        nl = np.flatnonzero(np.frombuffer(more, dtype=np.uint8) == _NL).astype(np.int64) + base
        if len(nl):
            starts = np.empty(len(nl), dtype=np.int64)
            starts[0] = self.open
            starts[1:] = nl[:-1] + 1
            self._add(starts, nl)
            self.open = int(nl[-1]) + 1

    def finish(self) -> None:
        """At EOF: the last line, if it has no newline, is a line too."""
        if self.open < len(self.data):
            self._add(np.array([self.open], dtype=np.int64), np.array([len(self.data)], dtype=np.int64))
            self.open = len(self.data)

    def take(self, batch_rows: int) -> tuple[bytearray, np.ndarray, np.ndarray, int, np.ndarray] | None:
        """The first lines holding ``batch_rows`` nonblank ones (or all), as (data, starts, ends, row, nonblank)."""
        if not self.parts:
            return None
        starts, ends, nonblank = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        cum = np.cumsum(nonblank)
        n = len(starts) if cum[-1] < batch_rows else int(np.searchsorted(cum, batch_rows)) + 1
        if cum[n - 1] == 0:  # only blank lines left
            return None
        cut = int(ends[n - 1]) + 1
        data, row = self.data, self.row
        self.data = data[cut:]
        del data[cut:]  # the batch keeps this buffer; the next one starts a new one
        self.row += n
        self.open = max(self.open - cut, 0)
        self.parts = [(starts[n:] - cut, ends[n:] - cut, nonblank[n:])] if n < len(starts) else []
        self.rows = int(nonblank[n:].sum())
        return data, starts[:n], ends[:n], row, nonblank[:n]


def _plain(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines that start with ``{`` and end with ``}`` (so they are neither blank nor padded)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    nonempty = ends > starts
    ok = np.zeros(len(starts), dtype=bool)
    ok[nonempty] = (buf[starts[nonempty]] == _LBRACE) & (buf[ends[nonempty] - 1] == _RBRACE)
    return ok


def _nonblank(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lines the line path turns into a row (``line.strip()`` is not empty)."""
    out = _plain(data, starts, ends)
    for i in np.flatnonzero(~out).tolist():
        out[i] = bool(data[starts[i] : ends[i]].strip())
    return out


def _arrow_block(
    data: bytes, starts: np.ndarray, ends: np.ndarray, row: int, nonblank: np.ndarray, schema: pa.Schema
) -> ArrowBlock | None:
    if (
        not nonblank.all()
        or not _plain(data, starts, ends).all()
        or int((ends - starts).max()) > MAX_ROW_BYTES
    ):
        return None  # the line path decides (and quarantines over-long lines unparsed)
    body = pa.py_buffer(memoryview(data)[: int(ends[-1])])  # no copy; starts[0] == 0
    longest = int((ends - starts).max())
    opts = paj.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="error", newlines_in_values=False
    )
    # 1 MB blocks parse fastest here (cache); a block must hold the longest line. One thread when Arrow's
    # pool has one (OMP_NUM_THREADS=1): handing blocks to a single worker only adds thread switches.
    read = paj.ReadOptions(use_threads=pa.cpu_count() > 1, block_size=max(1 << 20, 2 * longest + 2))
    try:
        table = paj.read_json(pa.BufferReader(body), read_options=read, parse_options=opts)
        table.validate(full=True)  # the parser does not check UTF-8 inside strings
    except (pa.ArrowException, ValueError):
        return None
    if table.num_rows != len(starts) or table.schema != schema:
        return None
    return ArrowBlock(row, data, starts, ends, table)
