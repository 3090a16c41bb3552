"""The Arrow block path of JSONL ingest gives exactly what the line-by-line path gives, and
overlapping batches on threads gives exactly what the serial loop gives.

Checked at two levels: the batches themselves (same boundaries, row numbers, parsed
values and error rows; hypothesis over real HH lines mixed with hostile ones), and
whole ingest units (records, quarantine, duplicates, accounting) on real HH data
with injected bad lines.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation.core.store import Store
from curation.ingest import blocks, sources
from curation.ingest.blocks import ArrowBlock, ParquetBlock, read_batches, read_parquet_batches
from curation.ingest.pipeline import IngestOptions, UnitResult, _batches, ingest_paths
from curation.ingest.readers.alpaca import AlpacaReader
from curation.ingest.readers.base import Reader, RowError, extra_meta, meta_json
from curation.ingest.readers.hh import HHReader
from curation.ingest.readers.trl import TRLPreferenceReader
from curation.ingest.sources import read_rows

HH = "hh-rlhf/harmless-base-test.jsonl.gz"
_Q = b'"\\n\\nHuman: q\\n\\nAssistant: a"'
#: Lines the block path must refuse (or hand to the row path) without changing the outcome.
HOSTILE = [
    b'{"chosen": ',  # malformed
    b"not json at all",
    b"[1, 2, 3]",
    b'"just a string"',
    b"{}",  # both fields missing (nulls)
    b'{"chosen": ' + _Q + b"}",  # one field missing
    b'{"chosen": null, "rejected": ' + _Q + b"}",
    b'{"chosen": 5, "rejected": ' + _Q + b"}",  # number: the row path makes it text
    b'{"chosen": 5.0, "rejected": "\\n\\nHuman: q\\n\\nAssistant: 5"}',
    b'{"chosen": true, "rejected": ' + _Q + b"}",
    b'{"chosen": {"x": 1}, "rejected": ' + _Q + b"}",
    b'{"chosen": ["x"], "rejected": ' + _Q + b"}",
    b'{"chosen": ' + _Q + b', "rejected": ' + _Q + b', "extra": 1}',  # extra key
    b'{"chosen": "x", "rejected": ' + _Q + b', "chosen": ' + _Q + b"}",  # repeated key: last wins
    b'{"chosen": ' + _Q + b', "rejected": "\\n\\nHuman: q\\n\\nAssistant: \xff"}',  # invalid UTF-8
    b'{"chosen": ' + _Q + b', "rejected": "\\n\\nHuman: q\\n\\nAssistant: \xed\xa0\x80"}',  # UTF-8 surrogate
    b'{"chosen": ' + _Q + b', "rejected": "\\ud800"}',  # lone surrogate escape
    b'{"chosen": ' + _Q + b', "rejected": "a\tb"}',  # raw control character
    b'{"chosen": ' + _Q + b', "rejected": "\\x"}',  # bad escape
    b'{"chosen": ' + _Q + b', "rejected": ' + _Q + b"} {}",  # two objects on one line
    b'{"chosen": ' + _Q + b', "rejected": ' + _Q + b"}\r",  # CRLF
    b'  {"chosen": ' + _Q + b', "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}  ',  # padded
    b'{"ch\\u006fsen": ' + _Q + b', "rejected": "\\n\\nHuman: q\\n\\nAssistant: c"}',  # escaped key
    b'{"chosen": "\\n\\nHuman: q\\u0000\\n\\nAssistant: a", "rejected": ' + _Q + b"}",  # NUL
    b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: ", "rejected": ' + _Q + b"}",  # fails validation
    b'{"chosen": "lead\\n\\nHuman: q\\n\\nAssistant: a", "rejected": ' + _Q + b"}",  # text before marker
    b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}',
    b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}',  # dup
    b"",  # blank
    b"   ",
    b"\x0c",
]


@pytest.fixture(scope="module")
def hh_lines(shared_data) -> list[bytes]:
    with gzip.open(shared_data / HH, "rb") as fh:
        return [line.rstrip(b"\n") for _, line in zip(range(1200), fh, strict=False)]


def _write(path: Path, lines: list[bytes], bom: bool, gz: bool, final_newline: bool = True) -> Path:
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + (b"\n" if final_newline else b"")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def assert_same_batches(path: Path, batch_rows: int, reader: type[Reader] = HHReader) -> list:
    """read_batches == _batches(read_rows(...)) row for row; returns the block-path batches."""
    exact = list(_batches(read_rows(path, "jsonl"), batch_rows))
    digest = hashlib.sha256()
    fast = list(read_batches(path, batch_rows, reader.layouts[0], reader.reads, digest))
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()  # the file as stored
    assert [len(b) for b in fast] == [len(b) for b in exact]
    # parsed on Arrow's thread pool (the serial loop's choice), the same batches
    threaded = list(read_batches(path, batch_rows, reader.layouts[0], reader.reads, parse_threads=True))
    for got, want in zip(threaded, fast, strict=True):
        assert type(got) is type(want)
        assert got.table.equals(want.table) if isinstance(got, ArrowBlock) else got == want
    names = set(reader.layouts[0].names)
    for got, want in zip(fast, exact, strict=True):
        if not isinstance(got, ArrowBlock):
            assert got == want
            continue
        assert got.row_numbers().tolist() == [r.row for r in want]
        parsed, meta = got.table.to_pylist(), got.meta
        for i, raw in enumerate(want):
            assert got.raw(i) == raw  # what the row path sees for a row it takes
            assert raw.error is None and isinstance(raw.value, dict)
            if None not in parsed[i].values():  # what the columnar path sees is the same object
                assert parsed[i] == {k: v for k, v in raw.value.items() if k in names}
            # and the other fields make the meta the row path makes
            assert (meta[i] if meta else "{}") == meta_json(extra_meta(raw.value, reader.reads))
    return fast


def test_real_hh_takes_the_block_path(hh_lines, tmp_path):
    path = _write(tmp_path / "hh.jsonl", hh_lines, bom=False, gz=False)
    fast = assert_same_batches(path, 500)
    assert all(isinstance(b, ArrowBlock) for b in fast) and sum(map(len, fast)) == len(hh_lines)


def test_hostile_lines_each_fall_back_or_match(hh_lines, tmp_path):
    for k, bad in enumerate(HOSTILE):
        lines = [*hh_lines[:5], bad, *hh_lines[5:9]]
        path = _write(tmp_path / f"h{k}.jsonl", lines, bom=False, gz=False)
        assert_same_batches(path, 4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(
        st.one_of(st.integers(0, 40).map(lambda i: ("hh", i)), st.sampled_from(HOSTILE)), max_size=30
    ),
    batch_rows=st.integers(1, 9),
    bom=st.booleans(),
    gz=st.booleans(),
    final_newline=st.booleans(),
    chunk=st.sampled_from([1, 2, 7, 300, blocks.CHUNK_BYTES]),
)
def test_batches_match_the_line_path(hh_lines, picks, batch_rows, bom, gz, final_newline, chunk):
    """Whatever the read size: lines and the BOM split across reads, batches cut mid-chunk."""
    lines = [hh_lines[p[1]] if isinstance(p, tuple) else p for p in picks]
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(blocks, "CHUNK_BYTES", chunk):
        path = _write(Path(tmp) / ("in.jsonl.gz" if gz else "in.jsonl"), lines, bom, gz, final_newline)
        assert_same_batches(path, batch_rows)


def _unit(root: Path) -> dict[str, list[dict]]:
    (unit,) = (root / "ingest").iterdir()
    out = {}
    for f in sorted(unit.glob("*.parquet")):
        rows = pq.read_table(f).to_pylist()
        for r in rows:
            for volatile in ("ingest_run", "started_at", "finished_at"):
                r.pop(volatile, None)
        out[f.name] = rows
    return out


def ingest_three_ways(
    tmp_path: Path, path: Path, reader: type[Reader], batch_rows: int
) -> tuple[dict, UnitResult]:
    """Ingest ``path`` with Arrow batches on threads, with columns from the line path, and row by row
    (``convert`` alone); assert the three give the same unit and accounting, and return them."""
    units, results = [], []
    for block_path, overlap, columns in ((True, True, True), (False, False, True), (False, False, False)):
        root = tmp_path / f"{path.name}_{block_path}_{overlap}_{columns}"
        opts = IngestOptions(
            batch_rows=batch_rows, block_path=block_path, overlap=overlap, reader=reader.name
        )
        by_row = mock.patch.object(reader, "layouts", ())
        with contextlib.nullcontext() if columns else by_row:
            (res,) = ingest_paths(Store(root), [str(path)], opts)
        units.append(_unit(root))
        results.append(res)
    assert results[0] == results[1] == results[2] and results[0].reconciles
    assert units[0] == units[1] == units[2]
    return units[0], results[0]


def units_of_jsonl_and_parquet(
    tmp_path: Path,
    lines: list[bytes],
    hostile: list[bytes],
    placement: tuple[int, int, int],
    table: pa.Table,
    reader: type[Reader],
    batch_rows: int,
    min_accepted: int,
    schema: pa.Schema | None = None,
) -> tuple[dict, dict]:
    """``ingest_three_ways`` of ``lines`` with the ``hostile`` ones as JSONL (``_jsonl_with_hostile``, at
    ``placement`` = (every, start, copies)) and of ``table`` as Parquet (row groups of 70 rows), whose every
    batch takes the Arrow path (read with ``schema``, by default the reader's first layout); each accepts
    at least ``min_accepted`` records. Returns (the JSONL file's unit, the Parquet file's unit)."""
    schema = schema or reader.layouts[0]
    jsonl = _jsonl_with_hostile(
        tmp_path / f"{reader.name}.jsonl", lines, hostile, *placement, reader, batch_rows, schema
    )
    parquet = tmp_path / f"{reader.name}.parquet"
    pq.write_table(table, parquet, row_group_size=70)
    assert all(
        isinstance(b, ParquetBlock) for b in read_parquet_batches(parquet, batch_rows, schema, reader.reads)
    )
    units = []
    for path in (jsonl, parquet):
        unit, res = ingest_three_ways(tmp_path, path, reader, batch_rows)
        assert res.accepted >= min_accepted
        units.append(unit)
    return units[0], units[1]


#: Fields added to every line: (JSON text, whether Arrow's own values make the meta; else each line does).
EXTRA_FIELDS = {
    "ids, sources, scores, tags": (
        b'"id": 7, "source": "hh", "score": 0.25, "tags": ["a", "b"], "ok": true',
        True,
    ),
    "nested lists of floats": (b'"xs": [[0.5], [1.5, 2.25], []], "n": -3', True),
    "escapes and UTF-8": (b'"note": "caf\\u00e9 \xc3\xa9 \\ud83d\\ude00 \\"q\\""', True),
    "a whole float": (b'"score": 1.0', False),  # 1 and 1.0 both parse as 1.0
    "an unsigned 64-bit integer": (b'"id": 18446744073709551615', False),  # Arrow: a float; orjson: exact
    "objects and lists in objects": (
        b'"info": {"k": 1, "b": {"c": "x", "d": [0.5]}, "a": [[1], [2, 3]]}',
        True,
    ),
    "a null": (b'"id": null', False),
    "a null in an object": (b'"info": {"k": null}', False),
    "a null in a list": (b'"tags": ["a", null]', False),
    "a whole float in an object": (b'"info": {"x": 2.0}', False),
    "an empty object": (b'"info": {}', False),
    "an empty list": (b'"tags": []', False),
    "a date": (b'"at": "2024-01-01 00:00:00"', False),  # Arrow infers a timestamp
}


@pytest.mark.parametrize("name", list(EXTRA_FIELDS))
def test_other_fields_become_meta(hh_lines, tmp_path, name):
    """Fields the reader does not read become each row's meta, exactly the row path's: from Arrow's values
    when they turn back into the JSON the row path reads, else from each row's own line. The batches keep
    the Arrow path either way, and are the line path's."""
    extra, from_columns = EXTRA_FIELDS[name]
    lines = [line[:-1] + b", " + extra + b"}" for line in hh_lines[:30]]
    path = _write(tmp_path / "hh.jsonl", lines, bom=False, gz=False)
    with mock.patch.object(blocks, "_line_meta", wraps=blocks._line_meta) as line_meta:
        fast = assert_same_batches(path, 10)
    assert all(isinstance(b, ArrowBlock) for b in fast) and line_meta.called == (not from_columns)
    # a field some rows lack (Arrow reads null there): the meta comes from the lines
    mixed = _write(tmp_path / "mixed.jsonl", [*lines[:5], *hh_lines[5:10]], bom=False, gz=False)
    assert all(isinstance(b, ArrowBlock) for b in assert_same_batches(mixed, 10))


@pytest.mark.parametrize(
    "extra", [b'"id": 99999999999999999999', b'"ids": [1, -9223372036854775809]', b'"x": {"y": 1e400000}']
)
def test_integers_beyond_64_bits_are_quarantined_on_both_paths(hh_lines, tmp_path, extra):
    """An integer outside 64 bits, which orjson and Arrow both read as a float (a silent change of the
    value), quarantines its row with the path of the field, the same on the line and Arrow paths; the other
    rows of the batch keep the Arrow path's batches. (Until 2026-12 it was kept in meta as a float.)"""
    lines = [*hh_lines[:12]]
    lines[4] = lines[4][:-1] + b", " + extra + b"}"
    path = _write(tmp_path / "hh.jsonl", lines, bom=False, gz=False)
    fast = assert_same_batches(path, 6)
    (bad,) = [r for b in fast if not isinstance(b, ArrowBlock) for r in b if r.error]
    if b"1e400000" in extra:  # a float literal too large: orjson refuses it, not an integer
        assert bad.row == 4 and "malformed JSON" in bad.error
        return
    assert bad.row == 4 and bad.field in ("id", "ids[1]") and "does not fit in 64 bits" in bad.error
    assert extra.split(b": ", 1)[1].strip(b"[]").split(b", ")[-1].decode() in bad.error  # the exact digits
    assert isinstance(fast[1], ArrowBlock)  # the next batch is plain again


def test_ingest_with_other_fields_identical(hh_lines, tmp_path):
    """Real HH lines that all carry an id and a source, with hostile lines in some batches: the stored
    records (their meta included), quarantine and accounting are those of the row path."""
    lines = [
        line[:-1] + b', "id": %d, "source": "hh-%d"}' % (i, i % 3) for i, line in enumerate(hh_lines[:400])
    ]
    for k, bad in enumerate(HOSTILE[:12]):
        lines.insert(97 * k + 3, bad)
    path = _write(tmp_path / "hh.jsonl", lines, bom=False, gz=False)
    assert sum(isinstance(b, ArrowBlock) for b in read_batches(path, 60, HHReader.layouts[0])) >= 2
    unit, res = ingest_three_ways(tmp_path, path, HHReader, 60)
    metas = [orjson.loads(r["meta"]) for r in unit["pair.parquet"]]
    assert len(metas) > 380 and all(set(m) == {"id", "source"} for m in metas)
    assert res.quarantined >= 5


@pytest.mark.parametrize(
    ("ends", "arrow"),
    [
        ((b', "score": 0.5}', b', "score": 1}'), True),  # read as floats: the meta comes from the lines
        ((b', "info": {"k": 1}}', b', "info": {"j": 2}}'), True),  # read as {k, j} with nulls: the same
        ((b', "id": 1}', b', "id": "a"}'), False),  # a number and a text: Arrow cannot type the field
    ],
)
def test_fields_that_change_between_rows(hh_lines, tmp_path, ends, arrow):
    """Other fields whose Arrow values are not the row path's keep the Arrow path with each line's meta;
    a field Arrow cannot type sends the batch line by line. The batches are the line path's either way."""
    lines = [line[:-1] + ends[i % 2] for i, line in enumerate(hh_lines[:20])]
    path = _write(tmp_path / "hh.jsonl", lines, bom=False, gz=False)
    assert [isinstance(b, ArrowBlock) for b in assert_same_batches(path, 10)] == [arrow] * 2


@pytest.mark.parametrize("gz", [False, True])
def test_ingest_units_identical(hh_lines, tmp_path, gz):
    lines = list(hh_lines[:600])
    for k, bad in enumerate(HOSTILE):  # spread over the file: some batches clean, some not
        lines.insert(37 * k + 11, bad)
    lines += hh_lines[:50]  # exact duplicates of earlier batches
    path = _write(tmp_path / ("hh.jsonl.gz" if gz else "hh.jsonl"), lines, bom=True, gz=gz)
    batches = list(read_batches(path, 60, HHReader.layouts[0]))
    assert any(isinstance(b, ArrowBlock) for b in batches) and any(isinstance(b, list) for b in batches)
    units, results = [], []
    # block or line path, batches overlapped on threads or one after another: the same unit
    for block_path, overlap in ((True, True), (False, False), (True, False)):
        root = tmp_path / f"store_{block_path}_{overlap}"
        opts = IngestOptions(batch_rows=60, block_path=block_path, overlap=overlap)
        (res,) = ingest_paths(Store(root), [str(path)], opts)
        units.append(_unit(root))
        results.append(res)
    assert results[0] == results[1] == results[2] and results[0].reconciles
    assert results[0].quarantined > len(HOSTILE) // 2 and results[0].duplicates >= 50
    assert units[0] == units[1] == units[2]
    q = units[0]["quarantine.parquet"]
    assert any(r["reason"].startswith("malformed JSON: invalid UTF-8") for r in q)
    assert orjson.loads(units[0]["run.parquet"][0]["options"]) == {}


#: TRL lines the block path must refuse or hand to the row path without changing the outcome.
TRL_HOSTILE = [
    b'{"prompt": "q", "chosen": "a", "rejected": " \\u3000 "}',  # blank after str.strip(): RowError
    b'{"prompt": "\\u001c", "chosen": "a", "rejected": "b"}',  # Python strips \x1c, Rust does not
    b'{"chosen": "a", "rejected": "b"}',  # no prompt: the implicit-prompt path
    b'{"prompt": null, "chosen": "a", "rejected": "b"}',
    b'{"prompt": "q", "chosen": 7, "rejected": "b"}',  # a number: the row path makes it text
    b'{"prompt": "q", "chosen": "a", "rejected": "b", "source": "x"}',  # extra field: kept in meta
    b'{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}',  # messages
    b'{"prompt": "q", "chosen": "same", "rejected": "same"}',  # fails validation
    b'{"prompt": "q", "chosen": "a", "rejected": "b"',  # malformed
]


def _trl_lines(hh_lines: list[bytes]) -> list[bytes]:
    """Real HH text as TRL rows of three strings: the last user turn, then the two responses."""
    reader, out = HHReader(), []
    for line in hh_lines:
        with contextlib.suppress(RowError):
            (rec,) = reader.convert(orjson.loads(line))
            prompt = rec["prompt"][-1]["content"]
            out.append(
                orjson.dumps(
                    {
                        "prompt": prompt,
                        "chosen": rec["chosen"][0]["content"],
                        "rejected": rec["rejected"][0]["content"],
                    }
                )
            )
    return out


def _jsonl_with_hostile(
    path: Path,
    lines: list[bytes],
    hostile: list[bytes],
    every: int,
    start: int,
    copies: int,
    reader,
    batch_rows: int,
    schema: pa.Schema | None = None,
) -> Path:
    """``lines`` with the ``hostile`` ones inserted ``every`` lines from ``start``, then the first ``copies``
    lines again (exact duplicates of earlier batches), written to ``path``; its batches take both paths
    (read with ``schema``, by default the reader's first layout)."""
    lines = list(lines)
    for k, bad in enumerate(hostile):
        lines.insert(every * k + start, bad)
    lines += lines[:copies]
    _write(path, lines, bom=False, gz=False)
    batches = list(read_batches(path, batch_rows, schema or reader.layouts[0]))
    assert sum(isinstance(b, ArrowBlock) for b in batches) >= 2 and any(isinstance(b, list) for b in batches)
    return path


def test_trl_ingest_units_identical(hh_lines, tmp_path):
    lines = _trl_lines(hh_lines[:400])
    path = _jsonl_with_hostile(tmp_path / "trl.jsonl", lines, TRL_HOSTILE, 41, 7, 30, TRLPreferenceReader, 50)
    unit, res = ingest_three_ways(tmp_path, path, TRLPreferenceReader, 50)
    assert res.duplicates >= 30
    reasons = {r["reason"] for r in unit["quarantine.parquet"]}
    assert "empty text" in reasons and "chosen == rejected" in reasons
    assert any(orjson.loads(r["meta"]) == {"source": "x"} for r in unit["pair.parquet"])


# ------------------------------------------------------------------ Parquet
#: Parquet rows of HH text the block path must hand to the row path (or match) without changing the outcome.
PARQUET_HOSTILE = [
    {"chosen": None, "rejected": "\n\nHuman: q\n\nAssistant: a"},
    {"chosen": None, "rejected": None},
    {"chosen": "", "rejected": "\n\nHuman: q\n\nAssistant: a"},
    {"chosen": "no markers at all", "rejected": "\n\nHuman: q\n\nAssistant: a"},
    {"chosen": "lead\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
    {"chosen": "\n\nHuman: q\x00\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"},
    {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": "\n\nHuman: q\n\nAssistant: b"},  # fails validation
    {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"},
    {"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"},
    {"chosen": "\n\nHuman: p\n\nAssistant: a", "rejected": "\n\nHuman: p\n\nAssistant: b"},  # duplicate
]
_NOT_UTF8 = b"\n\nHuman: q\n\nAssistant: caf\xe9"  # Latin-1 bytes in a string column


def _hh_parquet(
    path: Path, rows: list[dict], string_type: pa.DataType, not_utf8_at: int | None, **extra
) -> Path:
    """Rows as a Parquet file with small row groups (batches span them); optionally one rejected text
    that is not UTF-8 (Parquet writers do not check) and extra columns."""
    columns = {}
    for name in ("chosen", "rejected"):
        values = [None if r[name] is None else r[name].encode() for r in rows]
        if name == "rejected" and not_utf8_at is not None:
            values[not_utf8_at] = _NOT_UTF8
        # built from buffers: pa.array would refuse the bad bytes
        lengths = [0 if v is None else len(v) for v in values]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        validity = pa.array([v is not None for v in values]).buffers()[1]
        data = pa.py_buffer(b"".join(v or b"" for v in values))
        array = pa.Array.from_buffers(
            pa.large_string(), len(values), [validity, pa.py_buffer(offsets.tobytes()), data]
        )
        columns[name] = array.cast(string_type) if not_utf8_at is None else array
    pq.write_table(pa.table({**columns, **extra}), path, row_group_size=37)
    return path


def assert_same_parquet_batches(path: Path, batch_rows: int) -> list:
    exact = list(_batches(read_rows(path, "parquet"), batch_rows))
    fast = list(read_parquet_batches(path, batch_rows, HHReader.layouts[0]))
    assert [len(b) for b in fast] == [len(b) for b in exact]
    for got, want in zip(fast, exact, strict=True):
        if not isinstance(got, ParquetBlock):
            assert got == want
            continue
        assert got.row_numbers().tolist() == [r.row for r in want]
        assert [got.raw(i) for i in range(len(got))] == want
        assert got.table.to_pylist() == [r.value for r in want]
    return fast


@pytest.fixture(scope="module")
def hh_rows(hh_lines) -> list[dict]:
    return [orjson.loads(line) for line in hh_lines[:500]]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string(), pa.string_view()])
@pytest.mark.parametrize("at_once", [7, sources.PARQUET_ROWS_AT_ONCE])
def test_parquet_batches_match_the_row_path(hh_rows, tmp_path, string_type, at_once, monkeypatch):
    """(``at_once``: rows made into Python objects at a time by the row path, so that the non-UTF-8 row
    falls inside a later slice of its batch.)"""
    monkeypatch.setattr(sources, "PARQUET_ROWS_AT_ONCE", at_once)
    rows = list(hh_rows[:200])
    for k, bad in enumerate(PARQUET_HOSTILE):
        rows.insert(19 * k + 3, bad)
    path = _hh_parquet(tmp_path / "hh.parquet", rows, string_type, not_utf8_at=None)
    fast = assert_same_parquet_batches(path, 50)
    assert all(isinstance(b, ParquetBlock) for b in fast)

    # one string that is not UTF-8: that batch goes row by row, and the row is an error naming the column
    path = _hh_parquet(tmp_path / "bad.parquet", rows, string_type, not_utf8_at=120)
    fast = assert_same_parquet_batches(path, 50)
    assert [isinstance(b, ParquetBlock) for b in fast] == [True, True, False, True, True]
    (bad,) = [r for r in fast[2] if r.error]
    assert (bad.row, bad.error) == (120, "invalid UTF-8 in column 'rejected'") and "caf\ufffd" in bad.raw


def test_parquet_ingest_units_identical(hh_rows, tmp_path):
    rows = list(hh_rows[:400]) + list(hh_rows[:30])  # exact duplicates of earlier batches
    for k, bad in enumerate(PARQUET_HOSTILE):
        rows.insert(37 * k + 11, bad)
    path = _hh_parquet(tmp_path / "hh.parquet", rows, pa.large_string(), not_utf8_at=200)
    units, results = [], []
    for block_path, overlap in ((True, True), (False, False), (True, False)):
        root = tmp_path / f"store_{block_path}_{overlap}"
        (res,) = ingest_paths(
            Store(root), [str(path)], IngestOptions(batch_rows=60, block_path=block_path, overlap=overlap)
        )
        units.append(_unit(root))
        results.append(res)
    assert results[0] == results[1] == results[2] and results[0].reconciles and results[0].duplicates >= 30
    assert units[0] == units[1] == units[2]
    reasons = {r["reason"] for r in units[0]["quarantine.parquet"]}
    assert {"invalid UTF-8 in column 'rejected'", "chosen == rejected", "empty turn"} <= reasons

    # columns the reader does not read (as in most hub files): still Arrow batches, each row's values in
    # its meta as the row path puts them there (a float, a null, a list, text that is not UTF-8 in one)
    n = 100
    others = {
        "split": pa.array(["test"] * n),
        "score": pa.array([i / 7 if i % 9 else None for i in range(n)]),
        "tags": pa.array([["a", "b"][: i % 3] for i in range(n)]),
    }
    path = _hh_parquet(tmp_path / "extra.parquet", rows[:n], pa.string(), None, **others)
    assert all(isinstance(b, ParquetBlock) for b in read_parquet_batches(path, 60, HHReader.layouts[0]))
    units = []
    for block_path in (True, False):
        root = tmp_path / f"extra_{block_path}"
        (res,) = ingest_paths(Store(root), [str(path)], IngestOptions(batch_rows=60, block_path=block_path))
        assert res.reconciles and res.accepted > 80
        units.append(_unit(root))
    assert units[0] == units[1]
    metas = [orjson.loads(r["meta"]) for r in units[0]["pair.parquet"]]
    assert {m["split"] for m in metas} == {"test"} and any(m["score"] is None for m in metas)
    assert any(m["tags"] == ["a", "b"] for m in metas)


def test_trl_parquet_units_identical(hh_lines, tmp_path):
    """TRL rows of three strings as Parquet (columns in another order than the reader's fields)."""
    rows = [orjson.loads(line) for line in _trl_lines(hh_lines[:150])]
    rows[5]["chosen"] = rows[5]["rejected"]  # fails validation
    rows[9]["prompt"] = None  # the row path's implicit-prompt rules decide
    table = pa.table({name: [r[name] for r in rows] for name in ("rejected", "prompt", "chosen")})
    path = tmp_path / "trl.parquet"
    pq.write_table(table, path, row_group_size=29)
    assert (
        sum(
            isinstance(b, ParquetBlock)
            for b in read_parquet_batches(path, 50, TRLPreferenceReader.layouts[0])
        )
        == 3
    )
    units = []
    for block_path in (True, False):
        root = tmp_path / f"store_{block_path}"
        opts = IngestOptions(batch_rows=50, block_path=block_path, reader="trl")
        (res,) = ingest_paths(Store(root), [str(path)], opts)
        assert res.reconciles and res.quarantined >= 2
        units.append(_unit(root))
    assert units[0] == units[1]


#: Alpaca lines the block path must refuse or hand to the row path without changing the outcome.
ALPACA_HOSTILE = [
    b'{"instruction": "Name a colour.", "output": "Blue."}',  # no input: null in Arrow, absent in the row
    b'{"instruction": "Name a colour.", "input": null, "output": "Red."}',
    b'{"instruction": "Name a colour.", "input": "", "output": " \\u3000 "}',  # blank output: RowError
    b'{"instruction": "\\u001c", "input": "", "output": "x"}',  # Python strips \x1c, Rust does not
    b'{"instruction": "Add.", "input": 5, "output": "6"}',  # a number: quarantined, never made text
    b'{"instruction": 5, "input": "", "output": "6"}',
    b'{"instruction": "Hi.", "input": "", "output": "Hello.", "system": 12}',  # never dropped silently
    b'{"instruction": "Hi.", "input": "", "output": "Hello.", "system": "Be brief."}',  # extra field
    b'{"instruction": "Hi.", "input": "", "output": "Hello.", "history": [["a", "b"]]}',
    b'{"instruction": null, "input": "", "output": "x"}',
    b'{"instruction": "Hi.", "input": "", "output": "Hello."',  # malformed
    b'{"instruction": "Say hi.", "input": "", "output": "Hi."}',
    b'{"instruction": "Say hi.", "input": "", "output": "Hi."}',  # duplicate
]


@pytest.fixture(scope="module")
def alpaca_rows(shared_data) -> list[dict]:
    return orjson.loads((shared_data / "llama-factory" / "alpaca_en_demo.json").read_bytes())


def test_alpaca_units_identical(alpaca_rows, tmp_path):
    """Real Alpaca rows with hostile lines, as JSONL and as Parquet: Arrow batches on threads, columns
    from the line path, and row by row (``convert`` alone) give the same unit."""
    lines = [orjson.dumps(r) for r in alpaca_rows[:400]]
    jsonl = _jsonl_with_hostile(tmp_path / "alpaca.jsonl", lines, ALPACA_HOSTILE, 31, 5, 20, AlpacaReader, 50)
    # as on the hub (tatsu-lab/alpaca has a "text" column too): Arrow batches, "text" kept in meta; with a
    # "system" column, which the reader reads, row by row
    hub = [
        r | {"text": f"{r['instruction']} -> {r['output'][:20]}"}
        for r in alpaca_rows[:300] + alpaca_rows[:10]
    ]
    parquet = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(hub), parquet, row_group_size=70)
    assert all(
        isinstance(b, ParquetBlock) for b in read_parquet_batches(parquet, 50, AlpacaReader.layouts[0])
    )
    system = tmp_path / "system.parquet"
    pq.write_table(
        pa.Table.from_pylist([r | {"system": "Be brief." * (i % 2)} for i, r in enumerate(hub[:120])]), system
    )
    assert not any(
        isinstance(b, ParquetBlock)
        for b in read_parquet_batches(system, 50, AlpacaReader.layouts[0], AlpacaReader.reads)
    )
    units = {}
    for path in (jsonl, parquet, system):
        units[path], res = ingest_three_ways(tmp_path, path, AlpacaReader, 50)
        assert res.accepted >= 100 and (res.duplicates >= 10 or path == system)
    assert {"empty text", "expected text, got null"} <= {
        r["reason"] for r in units[jsonl]["quarantine.parquet"]
    }
    # a number where text is due is quarantined by name, not turned into text (until 2026-12: "Add.\n\n5")
    assert any(
        r["field"] == "input" and r["reason"].startswith("expected text, got int 5")
        for r in units[jsonl]["quarantine.parquet"]
    )
    assert not any("Add." in r["messages"][0]["content"] for r in units[jsonl]["sft.parquet"])
    assert all(" -> " in orjson.loads(r["meta"])["text"] for r in units[parquet]["sft.parquet"])
    assert sum(r["messages"][0]["role"] == "system" for r in units[system]["sft.parquet"]) >= 50


_U, _A = b'{"role": "user", "content": "Hi there."}', b'{"role": "assistant", "content": "Hello!"}'
#: OpenAI messages lines the block path must refuse or hand to the row path without changing the outcome.
MESSAGES_HOSTILE = [
    b'{"messages": ['
    + _U
    + b', {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]}]}',  # parts
    b'{"messages": [' + _U + b', {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}]}',
    b'{"messages": [{"role": "user", "content": "Hi.", "name": "ann"}, ' + _A + b"]}",  # extra turn field
    b'{"messages": [{"role": "wizard", "content": "Hi."}, ' + _A + b"]}",  # unknown role
    b'{"messages": [{"role": " Human ", "content": "Hi."}, {"role": "GPT", "content": "Yo."}]}',  # spellings
    b'{"messages": [' + _U + b', {"role": "assistant", "content": " \\u3000 "}]}',  # empty turn
    b'{"messages": [' + _U + b"]}",  # no response
    b'{"messages": [' + _A + b"]}",  # no user turn
    b'{"messages": []}',
    b'{"messages": [null, ' + _A + b"]}",
    b'{"messages": [' + _U + b", " + _A + b'], "source": "x"}',  # extra field: kept in meta
    b'{"messages": [' + _U + b", " + _A + b"]",  # malformed
    b'{"messages": [' + _U + b", " + _A + b"]}",
    b'{"messages": [' + _U + b", " + _A + b"]}",  # duplicate
]


def test_messages_units_identical(shared_data, tmp_path):
    """Real conversations with hostile lines as JSONL, and as Parquet in the hub's layout (struct fields
    content before role, large strings): Arrow batches on threads, columns from the line path, and row by
    row (``convert`` alone) give the same unit."""
    from curation.ingest.readers.messages import MessagesReader
    from tests.fixtures.inputs import real_conversations

    rows = real_conversations(shared_data)
    lines = [orjson.dumps(r) for r in rows[:400]]
    turn = pa.struct([("content", pa.large_string()), ("role", pa.large_string())])
    hub = pa.table({"messages": pa.array([r["messages"] for r in rows[:300]], type=pa.list_(turn))})
    jsonl_unit, parquet_unit = units_of_jsonl_and_parquet(
        tmp_path, lines, MESSAGES_HOSTILE, (23, 5, 20), hub, MessagesReader, 50, 290
    )
    assert {"empty turn", "empty conversation"} <= {r["reason"] for r in jsonl_unit["quarantine.parquet"]}
    sft = jsonl_unit["sft.parquet"]
    assert any(orjson.loads(r["meta"]) == {"source": "x"} for r in sft)
    assert any(orjson.loads(r["meta"]).get("turn_fields") for r in sft)  # name and tool_calls kept


#: ShareGPT lines the block path must refuse or hand to the row path without changing the outcome.
_H, _G = b'{"from": "human", "value": "Hi."}', b'{"from": "gpt", "value": "Hello!"}'
SHAREGPT_HOSTILE = [
    b'{"conversations": [' + _G + b'], "system": "Greet."}',  # a system prompt makes the reply valid
    b'{"conversations": [' + _G + b'], "system": " "}',  # a blank one does not
    b'{"conversations": [{"from": "system", "value": "S."}, ' + _H + b", " + _G + b'], "system": "T."}',
    b'{"conversations": [' + _H + b", " + _G + b'], "system": 5}',  # a number: Arrow refuses the batch
    b'{"conversations": [' + _H + b", " + _G + b'], "tools": "[]"}',  # extra field: kept in meta
    b'{"conversations": [{"from": "wizard", "value": "Hi."}, ' + _G + b"]}",
    b'{"conversations": [' + _H + b', {"from": "gpt", "value": ""}]}',
    b'{"conversations": [' + _H + b", " + _G + b"]",  # malformed
]


def test_sharegpt_units_identical(shared_data, tmp_path):
    """Real ShareGPT conversations (LLaMA-Factory's glaive demo: human, gpt, function_call, observation)
    with hostile lines as JSONL, and as Parquet with its tools column: Arrow batches on threads, columns from
    the line path, and row by row give the same unit."""
    from curation.ingest.readers.sharegpt import ShareGPTReader

    rows = orjson.loads((shared_data / "llama-factory" / "glaive_toolcall_en_demo.json").read_bytes())
    plain = [
        {"conversations": r["conversations"]} | ({"system": "Be helpful."} if i % 3 == 0 else {})
        for i, r in enumerate(rows)
    ]
    lines = [orjson.dumps(r) for r in plain]
    jsonl_unit, parquet_unit = units_of_jsonl_and_parquet(
        tmp_path, lines, SHAREGPT_HOSTILE, (29, 3, 15), pa.Table.from_pylist(rows), ShareGPTReader, 40, 250
    )
    sft = jsonl_unit["sft.parquet"]
    assert sum(r["messages"][0] == {"role": "system", "content": "Be helpful."} for r in sft) >= 95
    # the reply after "Greet." converts (the system prompt comes first), then fails validation's role order
    q = jsonl_unit["quarantine.parquet"]
    assert any(r["reason"] == "role order: first turn after the system prompt is not a user turn" for r in q)
    assert {r["messages"][-2]["role"] for r in sft} >= {"tool", "user"}  # observation turns became tool turns
    assert all("tools" in orjson.loads(r["meta"]) for r in parquet_unit["sft.parquet"])


#: ShareGPT pair lines the block path must refuse or hand to the row path without changing the outcome.
_C, _R = b'"chosen": {"from": "gpt", "value": "Yes."}', b'"rejected": {"from": "gpt", "value": "No."}'
SHAREGPT_PAIR_HOSTILE = [
    b'{"conversations": [' + _H + b"], " + _C + b", " + _R + b', "system": "Be brief."}',
    b'{"conversations": [' + _H + b"], " + _C + b", " + _R + b', "id": 3}',  # kept in meta
    b'{"conversations": [' + _H + b'], "chosen": [{"from": "gpt", "value": "Yes."}], ' + _R + b"}",  # a list
    b'{"conversations": [' + _H + b'], "chosen": {"from": "human", "value": "Yes."}, ' + _R + b"}",
    b'{"conversations": [' + _H + b'], "chosen": {"from": "gpt", "value": " "}, ' + _R + b"}",
    b'{"conversations": [' + _H + b", " + _G + b"], " + _C + b", " + _R + b"}",  # prompt ends with gpt
    b'{"conversations": [' + _H + b"], " + _C + b"}",  # no rejected
    b'{"conversations": [' + _H + b"], " + _C + b', "rejected": {"from": "gpt", "value": "Yes."}}',  # equal
    b'{"conversations": [' + _H + b"], " + _C,  # malformed
]


def test_sharegpt_pair_units_identical(shared_data, tmp_path):
    """Real ShareGPT pairs (LLaMA-Factory's DPO demo) with hostile lines as JSONL, and as Parquet: Arrow
    batches on threads, columns from the line path, and row by row give the same unit."""
    from curation.ingest.readers.sharegpt_pair import ShareGPTPairReader

    rows = orjson.loads((shared_data / "llama-factory" / "dpo_en_demo.json").read_bytes())
    lines = [orjson.dumps(r) for r in rows]
    table = pa.Table.from_pylist(rows)
    jsonl_unit, parquet_unit = units_of_jsonl_and_parquet(
        tmp_path, lines, SHAREGPT_PAIR_HOSTILE, (31, 4, 12), table, ShareGPTPairReader, 40, 290
    )
    pairs, q = jsonl_unit["pair.parquet"], jsonl_unit["quarantine.parquet"]
    assert {r["reason"] for r in q} >= {
        "response turns must come from the assistant (gpt)",
        "empty turn",
        "prompt ends with an assistant turn",
        "expected a list of turns, got null",
        "chosen == rejected",
    }
    assert any(r["prompt"][0] == {"role": "system", "content": "Be brief."} for r in pairs)
    assert any(orjson.loads(r["meta"]) == {"id": 3} for r in pairs)
    assert all(r["prompt"][-1]["role"] == "user" for r in parquet_unit["pair.parquet"])


def _ultrafeedback_layout(rows: list[dict]) -> list[dict]:
    """LLaMA-Factory's DPO demo (real ShareGPT pairs) in HuggingFaceH4/ultrafeedback_binarized's layout: the
    last human turn as the prompt, each response as the whole [user, assistant] conversation, ``messages``
    repeating the chosen one, an id and two scores."""
    out = []
    for k, r in enumerate(rows):
        prompt = r["conversations"][-1]["value"]
        sides = {
            side: [{"role": "user", "content": prompt}, {"role": "assistant", "content": r[side]["value"]}]
            for side in ("chosen", "rejected")
        }
        out.append(
            {"prompt": prompt, "prompt_id": f"p{k}"}
            | sides
            | {"messages": sides["chosen"], "score_chosen": 8.5, "score_rejected": 6.25}
        )
    return out


def _uf(prompt: str, chosen: list, rejected: list, extra: str = "") -> bytes:
    row = orjson.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return row[:-1] + extra.encode() + b"}"


_UF_USER, _UF_A, _UF_B = (
    {"role": "user", "content": "Hi."},
    {"role": "assistant", "content": "A."},
    {"role": "gpt", "content": "B."},
)
#: UltraFeedback-layout lines the block path must refuse or hand to the row path without changing the outcome.
TRL_MESSAGES_HOSTILE = [
    _uf("Hi.", [_UF_USER], [_UF_USER, _UF_B]),  # a response that is only the prompt it repeats
    _uf("Hi.", [_UF_USER, {"role": "assistant", "content": " "}], [_UF_USER, _UF_B]),  # an empty turn
    _uf("Hi.", [_UF_USER, {"role": "wizard", "content": "A."}], [_UF_USER, _UF_B]),  # an unknown role
    _uf(" ", [_UF_USER, _UF_A], [_UF_USER, _UF_B]),  # a blank prompt
    _uf("Hi.", [_UF_A], [_UF_B]),  # responses that do not repeat the prompt: kept whole
    _uf("Hi.", [_UF_USER, _UF_A], [_UF_USER, _UF_A]),  # chosen == rejected
    # a whole float (and in its batch, keys other rows lack): the batch's meta comes from its lines
    _uf("Hi.", [_UF_USER, _UF_A], [_UF_USER, _UF_B | {"content": "C."}], ', "score_chosen": 8.0'),
    _uf("Hi.", [_UF_USER, _UF_A], [_UF_USER, _UF_B | {"content": "D."}], ', "messages": null'),
    _uf(
        "Hi.",
        [_UF_USER, _UF_A],
        [_UF_USER, _UF_B | {"content": "E."}],
        ', "messages": [{"role": "user", "content": "Hi.", "name": "n"}]',
    ),
    b'{"prompt": "Hi.", "chosen": "A.", "rejected": "B."}',  # strings: Arrow refuses the batch
    _uf("Hi.", [_UF_USER, _UF_A], [_UF_USER, _UF_B])[:-9],  # malformed
]


def test_trl_message_pairs_units_identical(shared_data, tmp_path):
    """Real pairs in UltraFeedback's layout (a prompt, whole conversations as responses, ``messages``, scores)
    with hostile lines as JSONL, and as Parquet: Arrow batches on threads, columns from the line path, and
    row by row give the same unit; the responses are the turns after the prompt."""
    rows = _ultrafeedback_layout(
        orjson.loads((shared_data / "llama-factory" / "dpo_en_demo.json").read_bytes())
    )
    schema = TRLPreferenceReader().block_schema(rows)
    assert schema == TRLPreferenceReader.layouts[1]
    lines, table = [orjson.dumps(r) for r in rows], pa.Table.from_pylist(rows)
    jsonl_unit, parquet_unit = units_of_jsonl_and_parquet(
        tmp_path, lines, TRL_MESSAGES_HOSTILE, (23, 5, 12), table, TRLPreferenceReader, 40, 290, schema
    )
    pairs, q = jsonl_unit["pair.parquet"], jsonl_unit["quarantine.parquet"]
    assert {r["reason"] for r in q} >= {
        "no response after the prompt it repeats",
        "empty turn",
        "unknown role 'wizard'",
        "empty text",
        "chosen == rejected",
    }
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in pairs)
    assert all([t["role"] for t in r["chosen"] + r["rejected"]] == ["assistant"] * 2 for r in pairs)
    assert any(
        orjson.loads(r["meta"]) == {"prompt_id": "p3", "score_chosen": 8.5, "score_rejected": 6.25}
        for r in pairs
    )
    assert any(orjson.loads(r["meta"]) == {"score_chosen": 8.0} for r in pairs)
    assert len(parquet_unit["pair.parquet"]) >= 290
    # and ingest reads the Parquet file in that layout: every batch reaches the columns
    arrow = mock.patch.object(
        TRLPreferenceReader, "take_table", autospec=True, side_effect=TRLPreferenceReader.take_table
    )
    with arrow as spy:
        spy_file = tmp_path / "spy.parquet"
        pq.write_table(table, spy_file, row_group_size=70)
        ingest_paths(Store(tmp_path / "spy"), [str(spy_file)], IngestOptions(batch_rows=40, reader="trl"))
    assert spy.call_count == -(-len(rows) // 40)
