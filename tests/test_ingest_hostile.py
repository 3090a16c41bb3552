"""Hostile files through ingest (issue 23, round two): damaged files in a multi-file run, CSV records that
are not well-formed, rows and documents that expand to gigabytes, values that would change silently,
column maps that lose fields, and accounting that must add up. Real rows from ../shared/data throughout."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation import catalog
from curation.cli import app
from curation.core.store import Store
from curation.ingest.blocks import ArrowBlock, read_batches
from curation.ingest.pipeline import IngestOptions, _batches, ingest_paths
from curation.ingest.readers.hh import HHReader
from curation.ingest.sources import BATCH_BYTES, SourceError, read_rows

REPO = Path(__file__).resolve().parents[1]
HH = "hh-rlhf/harmless-base-test.jsonl.gz"
SFT = "llama-factory/v1_sft_demo.jsonl"
OASST = "oasst/en_100_tree.jsonl"
ALPACA = "llama-factory/alpaca_en_demo.json"


def _units(store: Store) -> list[str]:
    return sorted(p.name for p in store.root.glob("ingest/*"))


def _staging_left(store: Store) -> list[Path]:
    return list(store.staging.rglob("*")) if store.staging.exists() else []


def _count(store: Store, view: str) -> int:
    con = catalog.connect(store)
    try:
        return con.sql(f"SELECT count(*) FROM {view}").fetchall()[0][0]
    finally:
        con.close()


# ----------------------------------------------------------------------------- item 7: damaged files
def _damaged(kind: str, shared: Path, tmp: Path) -> tuple[Path, str]:
    """A damaged copy of a real file, and a word its error must contain."""
    hh = (shared / HH).read_bytes()
    if kind == "truncated .jsonl.gz":
        path, data, word = tmp / "hh_cut.jsonl.gz", hh[: len(hh) * 3 // 5], "truncated"
    elif kind == "bad CRC .jsonl.gz":
        data = bytearray(hh)
        data[-6] ^= 0xFF  # the CRC-32 in the gzip trailer
        path, word = tmp / "hh_crc.jsonl.gz", "CRC check failed"
    elif kind == "corrupt deflate .jsonl.gz":
        data = bytearray(hh)
        for i in range(len(hh) // 2, len(hh) // 2 + 64):
            data[i] ^= 0x5A
        path, word = tmp / "hh_bits.jsonl.gz", "gzip"
    elif kind == "truncated .json.gz":
        doc = gzip.compress((shared / ALPACA).read_bytes())
        path, data, word = tmp / "alpaca_cut.json.gz", doc[: len(doc) // 2], "truncated"
    else:
        rows = orjson.loads((shared / ALPACA).read_bytes())
        buf = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=100)
        whole = buf.getvalue().to_pybytes()
        path, word = tmp / f"alpaca_{kind.split()[0]}.parquet", "Parquet"
        if kind == "truncated .parquet":
            data = whole[: len(whole) // 2]
        elif kind == "empty .parquet":
            data = b""
        else:  # "corrupt .parquet footer": a footer length that points before the file
            data = bytearray(whole)
            data[-8:-4] = (2**31 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path, word


DAMAGE = [
    "truncated .jsonl.gz",
    "bad CRC .jsonl.gz",
    "corrupt deflate .jsonl.gz",
    "truncated .json.gz",
    "truncated .parquet",
    "empty .parquet",
    "corrupt .parquet footer",
]


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("overlap", [True, False])
def test_a_damaged_file_is_reported_and_the_others_are_ingested(shared_data, tmp_path, kind, overlap):
    """A file that cannot be read to its end is reported by name with the reason; nothing of it is
    committed (its rows read before the error are dropped, staging included); the files before and after
    it are ingested; a rerun skips those and reports the bad one again."""
    bad, word = _damaged(kind, shared_data, tmp_path)
    files = [str(shared_data / SFT), str(bad), str(shared_data / OASST)]
    store = Store(tmp_path / "store")
    opts = IngestOptions(batch_rows=300, overlap=overlap)  # several batches of the HH file before the error
    first = ingest_paths(store, files, opts)
    assert [r.error is None for r in first] == [True, False, True]
    assert str(bad) in first[1].error and word in first[1].error and "nothing of this file" in first[1].error
    assert first[0].accepted > 400 and first[2].accepted == 212
    assert len(_units(store)) == 2 and not _staging_left(store)
    assert _count(store, "pairs") == 0  # no row of the damaged HH file, however many batches were read
    again = ingest_paths(store, files, opts)
    assert [r.skipped for r in again] == [True, False, True] and again[1].error == first[1].error


@pytest.mark.parametrize("block_path", [True, False])
def test_rows_of_a_half_read_file_are_not_remembered(shared_data, tmp_path, monkeypatch, block_path):
    """Batches of a truncated file are read, validated and written to staging before its error: they are
    dropped with it (nothing in staging, nothing committed), and their ids are forgotten, so the intact copy
    ingested next in the same run is accepted in full, not counted as duplicates."""
    from curation.ingest import blocks

    monkeypatch.setattr(blocks, "CHUNK_BYTES", 1 << 16)  # small reads: batches before the damaged part
    bad, _ = _damaged("truncated .jsonl.gz", shared_data, tmp_path)
    store = Store(tmp_path / "store")
    seen: list[tuple[str, int]] = []
    opts = IngestOptions(batch_rows=200, block_path=block_path)
    res = ingest_paths(
        store,
        [str(bad), str(shared_data / HH)],
        opts,
        on_batch=lambda r: seen.append((r.source_file, r.accepted)),
    )
    assert max(n for f, n in seen if f == str(bad)) >= 600  # accepted into staging, then dropped
    assert res[0].error and "nothing of this file was ingested" in res[0].error and not _staging_left(store)
    assert (res[1].accepted, res[1].duplicates) == (2308, 0) and len(_units(store)) == 1


def test_cli_reports_a_damaged_file_and_exits_non_zero(shared_data, tmp_path):
    bad, _ = _damaged("truncated .jsonl.gz", shared_data, tmp_path)
    store = tmp_path / "store"
    res = CliRunner().invoke(app, ["ingest", str(shared_data / SFT), str(bad), "--store", str(store)])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Aborted" not in text and "Traceback" not in text
    assert "hh_cut.jsonl.gz: cannot be read to the end: the compressed stream ends early" in text
    assert "1 of 2 file(s) not ingested (hh_cut.jsonl.gz)" in text and "NOT INGESTED" in text
    line = next(x for x in res.output.splitlines() if "v1_sft_demo.jsonl" in x and "│" in x)
    assert [c.strip() for c in line.split("│") if c.strip()][4:7] == ["500", "0", "500"]


# ----------------------------------------------------------------------------- item 12: store errors
@pytest.fixture
def two_files(shared_data) -> list[str]:
    return [str(shared_data / SFT), str(shared_data / OASST)]


def _fail_at(monkeypatch, target: str, err: int, when: int = 1) -> None:
    """Make the ``when``-th call of ``target`` (``os.open`` of the lock, ``os.rename`` of a commit, or a
    Parquet write) raise ``OSError(err)``."""
    import curation.core.store as store_mod
    import curation.ingest.pipeline as pipeline

    calls = {"n": 0}

    def failing(real):
        def call(*args, **kwargs):
            hit = target != "lock" or str(args[0]).endswith(".lock")
            calls["n"] += hit
            if hit and calls["n"] == when:
                raise OSError(err, os.strerror(err), str(args[0]) if target != "write" else None)
            return real(*args, **kwargs)

        return call

    if target == "lock":
        monkeypatch.setattr(store_mod.os, "open", failing(os.open))
    elif target == "commit":
        monkeypatch.setattr(store_mod.os, "rename", failing(os.rename))
    else:
        monkeypatch.setattr(pipeline._Writers, "_write", failing(pipeline._Writers._write))


def test_read_only_store_fails_at_the_lock_in_one_line(two_files, tmp_path, monkeypatch):
    import errno

    store = tmp_path / "store"
    Store(store)
    _fail_at(monkeypatch, "lock", errno.EROFS)
    res = CliRunner().invoke(app, ["ingest", *two_files, "--store", str(store)])
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit))
    text = " ".join(res.output.split())
    assert f"read-only file system while taking the writer lock {store}/.lock; nothing was written" in text
    assert "Traceback" not in text and not list(store.iterdir())


@pytest.mark.parametrize(("target", "err", "words"), [
    ("commit", 30, "read-only file system while committing"),
    ("write", 28, "disk full while ingesting"),
])  # fmt: skip
def test_store_error_on_the_second_file_says_what_was_kept(
    two_files, tmp_path, monkeypatch, target, err, words
):
    """A read-only file system at the second commit, or a full disk while writing the second file: one
    clear error that names the file not committed and the one before it that was (not "nothing was
    committed"); nothing half-written left, not even in staging; the rerun finishes."""
    store = Store(tmp_path / "store")
    _fail_at(monkeypatch, target, err, when=2 if target == "commit" else 1 + 1)
    from curation.core.errors import StoreError

    with pytest.raises(StoreError) as info:
        ingest_paths(store, two_files, IngestOptions(overlap=False, batch_rows=50_000))
    msg = str(info.value)
    assert words in msg and "en_100_tree.jsonl was not committed" in msg
    assert "the 1 file(s) before it were and are kept (v1_sft_demo.jsonl)" in msg
    assert len(_units(store)) == 1 and not _staging_left(store)
    monkeypatch.undo()
    res = ingest_paths(store, two_files)
    assert [r.skipped for r in res] == [True, False] and _count(store, "rankings") == 212


def test_catalog_that_cannot_be_written_is_one_clear_error_and_the_rerun_rewrites_it(
    two_files, tmp_path, monkeypatch
):
    """`curate ingest` ends by rewriting catalog.duckdb; a disk too full for it is one clear line (the units
    stay committed) and the next command rewrites it."""
    import duckdb

    root = tmp_path / "store"
    ingest = ["ingest", *map(str, two_files[:1]), "--store", str(root), "--no-near-dedup"]
    assert CliRunner().invoke(app, ingest).exit_code == 0

    def full(self, views):
        raise duckdb.TransactionException(
            'TransactionContext Error: Failed to commit: Could not write file ".catalog.wal": No space left on device'
        )

    monkeypatch.setattr(Store, "write_catalog", full)
    both = ["ingest", *map(str, two_files), "--store", str(root), "--no-near-dedup"]
    res = CliRunner().invoke(app, both)
    assert res.exit_code == 1
    assert "cannot write" in res.output and "catalog.duckdb (" in res.output and "No space left" in res.output
    monkeypatch.undo()
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    stale = con.sql("SELECT count(*) FROM rankings").fetchall()[0][0]  # the view over no file yet
    con.close()
    assert stale == 0
    assert len(_units(Store(root))) == 2  # both files committed
    res = CliRunner().invoke(app, both)  # every unit skipped, and the catalog rewritten
    assert res.exit_code == 0, res.output
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    assert con.sql("SELECT count(*) FROM rankings").fetchall()[0][0] == 212
    con.close()


# ----------------------------------------------------------------------------- item 8: CSV
def _gsm8k_records(shared: Path, n: int = 60) -> tuple[list[str], list[list[str]]]:
    """The CSV text of each of the first ``n`` GSM8K rows, the header's first (csv quotes the answers: they
    hold newlines), and the rows."""
    rows = [json.loads(line) for line in (shared / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]]
    pairs = [[r["question"], r["answer"]] for r in rows]
    records = []
    for fields in [["question", "answer"], *pairs]:
        out = io.StringIO()
        csv.writer(out).writerow(fields)
        records.append(out.getvalue())
    return records, pairs


def _gsm8k_csv(shared: Path, n: int = 60) -> tuple[str, list[list[str]]]:
    records, pairs = _gsm8k_records(shared, n)
    return "".join(records), pairs


CSV_MAP = IngestOptions(kind="sft", mapping={"prompt": "question", "response": "answer"})


def _sft_contents(store: Store) -> list[tuple[int, str, str]]:
    con = catalog.connect(store)
    try:
        rows = con.sql("SELECT source_row, messages FROM sft ORDER BY source_row").fetchall()
    finally:
        con.close()
    return [(r, m[0]["content"], m[-1]["content"]) for r, m in rows]


@pytest.mark.parametrize("before", ["a quoted question", "an unquoted question"])
def test_csv_unterminated_quote_is_quarantined_not_merged(shared_data, tmp_path, before):
    """A row whose quote never closes used to run into the next row (one row lost, one corrupted, nothing
    quarantined). Now it is quarantined, naming its line, and the next row, whose quote showed the error,
    is read whole: every other row exactly as from the intact file; quoted newlines inside fields stay."""
    records, pairs = _gsm8k_records(shared_data)
    text = "".join(records)
    quoted = before == "a quoted question"
    k = next(i for i, r in enumerate(records) if i > 20 and r.startswith('"') == quoted)
    at = sum(r.count("\n") for r in records[:k])  # lines before record k
    broken = records[:k] + ['"Is this quote ever closed?,No\r\n'] + records[k:]
    clean_csv, broken_csv = tmp_path / "clean.csv", tmp_path / "broken.csv"
    clean_csv.write_text(text, encoding="utf-8", newline="")
    broken_csv.write_text("".join(broken), encoding="utf-8", newline="")
    clean, hurt = Store(tmp_path / "a"), Store(tmp_path / "b")
    (c,) = ingest_paths(clean, [str(clean_csv)], CSV_MAP)
    (h,) = ingest_paths(hurt, [str(broken_csv)], CSV_MAP)
    assert (
        c.accepted == len(pairs)
        and h.reconciles
        and (h.rows_read, h.accepted) == (len(pairs) + 1, len(pairs))
    )
    (q,) = hurt.read("quarantine").to_pylist()
    assert q["reason"] == f"malformed CSV (line {at + 1}): the quote opened on line {at + 1} is not closed"
    assert q["raw"] == '"Is this quote ever closed?,No\r\n'
    bad = q["source_row"]
    got = [(r - (r > bad), p, a) for r, p, a in _sft_contents(hurt)]
    assert got == _sft_contents(clean) and sum("\n" in a for _, _, a in got) == len(pairs)


def test_csv_quote_never_closed_to_the_end_keeps_the_lines_it_ran_into(tmp_path, store):
    """With no later quote to stop it, the open quote runs to the end of the file: those lines are one
    quarantine row that names them and holds them (none is dropped or merged into a record)."""
    path = tmp_path / "open.csv"
    path.write_text('question,answer\nq1,a1\n"q2,a2\nq3,a3\nq4,a4\n')
    (res,) = ingest_paths(store, [str(path)], CSV_MAP)
    (q,) = store.read("quarantine").to_pylist()
    assert (res.accepted, res.quarantined) == (1, 1) and q["raw"] == '"q2,a2\nq3,a3\nq4,a4\n'
    assert q["reason"].startswith("malformed CSV (lines 3-5): unexpected end of data")


def test_csv_invalid_utf8_is_quarantined_like_jsonl(shared_data, tmp_path):
    """Invalid UTF-8 in a CSV field used to become U+FFFD silently; JSONL and Parquet quarantine the same
    bytes. Now CSV does too, naming the column; the other rows are untouched."""
    text, pairs = _gsm8k_csv(shared_data, 30)
    data = text.encode()
    target = pairs[10][1].split("\n")[0].encode()
    data = data.replace(target, target[:5] + b"\xff\xfe" + target[5:], 1)
    path = tmp_path / "bytes.csv"
    path.write_bytes(data)
    store = Store(tmp_path / "s")
    (res,) = ingest_paths(store, [str(path)], CSV_MAP)
    (q,) = store.read("quarantine").to_pylist()
    assert (res.rows_read, res.accepted, q["source_row"]) == (30, 29, 10)
    assert q["reason"] == "invalid UTF-8 in column 'answer'" and "\ufffd" in q["raw"]
    assert not any("\ufffd" in a for _, _, a in _sft_contents(store))
    jsonl = tmp_path / "bytes.jsonl"  # the same bytes in JSONL: quarantined as well
    jsonl.write_bytes(b'{"question": "q", "answer": "' + target[:5] + b'\xff\xfe"}\n')
    (j,) = ingest_paths(Store(tmp_path / "j"), [str(jsonl)], CSV_MAP)
    assert (j.accepted, j.quarantined) == (0, 1)


def test_csv_header_that_repeats_a_column_is_refused(tmp_path, store):
    path = tmp_path / "twice.csv"
    path.write_text("question,answer,answer\nq,a1,a2\n")
    (res,) = ingest_paths(store, [str(path)], CSV_MAP)
    assert "repeats the column(s) 'answer'" in res.error


# ----------------------------------------------------------------------------- item 9: memory
@pytest.mark.parametrize("batch_bytes", [BATCH_BYTES, 20_000])
def test_over_long_lines_and_blank_runs_agree_on_both_paths(shared_data, tmp_path, batch_bytes):
    """With a small row limit: over-long lines are error rows from their first bytes on the line path and the
    Arrow block path alike, runs of blank lines (counted in the row numbers) are skipped by both, and both
    end a batch where its text reaches ``batch_bytes``."""
    with gzip.open(shared_data / HH, "rb") as fh:
        lines = fh.read().splitlines()[:300]
    body = [*lines[:50], b"\n" * 5000 + b" " * 9000, *lines[50:120], b'{"chosen": "' + b"x" * 20000 + b'"}']
    body += [b" " * 30000, *lines[120:]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(body) + b"\n")
    limit = 6000  # some real HH lines are longer too
    exact = list(_batches(read_rows(path, "jsonl", limit=limit), 40, batch_bytes))
    fast = list(
        read_batches(path, 40, HHReader.layouts[0], HHReader.reads, limit=limit, batch_bytes=batch_bytes)
    )
    assert [len(b) for b in fast] == [len(b) for b in exact] and any(isinstance(b, ArrowBlock) for b in fast)
    if batch_bytes < 1 << 20:  # each batch ends at the line that brings its text to 20 KB, not at 40 lines
        full = [b for b in exact[:-1] if len(b) < 40]
        assert len(full) > 10 and all(
            sum(r.size for r in b[:-1]) < 20_000 <= sum(r.size for r in b) for b in full
        )
    flat = [r for b in exact for r in b]
    for got, want in zip(fast, exact, strict=True):
        assert [got.raw(i) for i in range(len(got))] == want if isinstance(got, ArrowBlock) else got == want
    over = [r for r in flat if r.error and "limit" in r.error]
    assert len(over) == sum(len(line) > limit for line in lines) + 1
    assert all(r.raw.endswith("more bytes, see the source file]") for r in over)
    assert flat[50].row == 50 + 5000 + 1  # the blank lines count
    assert len(flat) == len(lines) + 1


def _hostile_memory(case: str, size_mb: int, *extra: str) -> dict:
    """Run benchmarks/ingest/hostile_memory.py for one case: a child ingests the hostile file, another the
    same rows without it; each reports its own peak RSS."""
    script = REPO / "benchmarks" / "ingest" / "hostile_memory.py"
    cmd = [sys.executable, str(script), "--cases", case, "--size-mb", str(size_mb), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["jsonl-gz-line", "jsonl-gz-line-rows", "csv-line"])
def test_a_256_mib_line_costs_no_more_than_a_chunk(case, tmp_path):
    """A 256 MiB line (0.3 MB of .gz; a CSV line) is quarantined from its first MB while the rest is read
    and dropped: peak memory within 100 MB of the same rows without it (it was 3.1 GB for 1 GiB)."""
    r = _hostile_memory(case, 256, "--work", str(tmp_path))
    h = r["hostile"]
    assert h["error"] is None and h["quarantined"] >= 1, r
    assert any(
        "larger than the 16777216-byte limit" in x or "16777216-character limit" in x for x in h["reasons"]
    )
    assert r["extra_mb"] < 100, r


@pytest.mark.slow
def test_many_long_lines_do_not_make_memory_grow_with_the_file(tmp_path):
    """Lines of 8 MiB, each under the row limit (a .jsonl.gz of 1-3 MB): batches end at --batch-mb of text, so
    six times the lines cost about the same memory. Measured on the CI machine: +30 to +135 MB from 64 to 384
    MiB of lines (allocator noise); without the byte budget every line sat in one batch and the larger file cost
    1.8 GB more (974 -> 2,801 MB with --batch-mb 100000)."""
    small = _hostile_memory("jsonl-gz-lines", 64, "--work", str(tmp_path), "--batch-mb", "16")
    large = _hostile_memory(
        "jsonl-gz-lines", 384, "--work", str(tmp_path), "--batch-mb", "16", "--no-baseline"
    )
    assert small["hostile"]["quarantined"] == 4 + 8 and large["hostile"]["quarantined"] == 4 + 48
    assert large["hostile"]["peak_mb"] < small["hostile"]["peak_mb"] + 300, (small, large)
    assert small["extra_mb"] < 600, small


@pytest.mark.slow
def test_a_json_document_over_the_cap_is_refused_before_it_is_held(tmp_path):
    """A .json.gz array holding one 256 MiB string (11.9 GB for 1 GiB before): refused with an error that
    names the file and the cap and suggests JSON Lines, having read no more than the cap (32 MiB here)."""
    r = _hostile_memory("json-gz-string", 256, "--work", str(tmp_path), "--max-json-mb", "32")
    err = r["hostile"]["error"]
    assert "alpaca_long_string-256mib.json.gz: larger than 32 MiB once decompressed" in err, r
    assert "JSON Lines" in err and "--max-json-mb" in err
    assert r["extra_mb"] < 100, r


@pytest.mark.slow
@pytest.mark.parametrize("case", ["jsonl-blank-lines", "jsonl-blank-rows"])
def test_blank_lines_are_skipped_in_constant_memory(case, tmp_path):
    """32 MiB of blank lines between real rows (64 MiB cost 4 GB before; 1 GiB did not finish in 2 minutes)."""
    r = _hostile_memory(case, 32, "--work", str(tmp_path))
    assert r["hostile"]["accepted"] == r["baseline"]["accepted"] == 2308, r
    assert r["extra_mb"] < 60, r


@pytest.mark.parametrize("block_path", [True, False])
def test_a_parquet_row_over_the_limit_is_quarantined_without_python_copies(shared_data, tmp_path, block_path):
    """A Parquet row with more text than the row limit (here a 17 MiB instruction, 0.3 MB of zstd) is an
    error row naming the column, on the Arrow block path and the row path alike; the other rows are read."""
    rows = orjson.loads((shared_data / ALPACA).read_bytes())
    rows.insert(500, {"instruction": "x" * (17 << 20), "input": "", "output": "y"})
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd", row_group_size=300)
    store = Store(tmp_path / f"s{block_path}")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(block_path=block_path, batch_rows=200))
    (q,) = store.read("quarantine").to_pylist()
    assert (res.accepted, res.quarantined, q["source_row"]) == (985, 1, 500)
    assert (
        q["reason"]
        == f"row of {(17 << 20) + 1} bytes of text is larger than the 16777216-byte limit; not parsed"
    )
    assert "'instruction' (17825792 bytes)" in q["raw"] and len(q["raw"]) < 200


def test_json_cap_error_names_the_file_and_lets_json_lines_through(shared_data, tmp_path):
    rows = orjson.loads((shared_data / ALPACA).read_bytes())
    doc = tmp_path / "alpaca.json"
    doc.write_bytes(orjson.dumps(rows))
    with pytest.raises(SourceError, match=r"alpaca\.json: larger than 0\.25 MiB .* Convert it to JSON Lines"):
        list(read_rows(doc, max_json_bytes=256 * 1024))
    lines = tmp_path / "lines.json"  # JSON Lines under a .json name, over the cap: read as JSON Lines
    lines.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
    assert sum(1 for _ in read_rows(lines, max_json_bytes=256 * 1024)) == len(rows)


# ----------------------------------------------------------------------------- item 14: values
def test_values_that_would_change_are_quarantined_by_field(shared_data, tmp_path):
    """An integer beyond 64 bits (which became a float in meta), an Alpaca system prompt that is not text
    (dropped without a trace) and a number where text is due (made text): each quarantined with its field,
    in JSONL, in a JSON array and on the Arrow path; the real rows around them are accepted."""
    rows = orjson.loads((shared_data / ALPACA).read_bytes())[:40]
    hostile = [
        b'{"instruction": "Hi.", "input": "", "output": "Hello.", "id": 123456789012345678901234567890}',
        b'{"instruction": "Hi.", "input": "", "output": "Hello.", "system": 12}',
        b'{"instruction": 5, "input": "", "output": "Hello."}',
        b'{"instruction": "Hi.", "input": "", "output": 1.50}',
    ]
    lines = [orjson.dumps(r) for r in rows[:20]] + hostile + [orjson.dumps(r) for r in rows[20:]]
    jsonl, array = tmp_path / "a.jsonl", tmp_path / "a.json"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    array.write_bytes(b"[" + b",\n".join(lines) + b"]")
    want = {
        (20, "id"): "integer 123456789012345678901234567890 at id does not fit in 64 bits",
        (21, "system"): "expected text, got int 12",
        (22, "instruction"): "expected text, got int 5",
        (23, "output"): "expected text, got float 1.5",
    }
    for path, block in ((jsonl, True), (jsonl, False), (array, False)):
        store = Store(tmp_path / f"s_{path.suffix}_{block}")
        (res,) = ingest_paths(store, [str(path)], IngestOptions(reader="alpaca", block_path=block))
        got = {(q["source_row"], q["field"]): q["reason"] for q in store.read("quarantine").to_pylist()}
        assert set(got) == set(want) and all(got[k].startswith(v) for k, v in want.items()), got
        assert (
            res.accepted == 40
            and "123456789012345678901234567890" in store.read("quarantine")["raw"][0].as_py()
        )


def test_an_unsigned_64_bit_integer_is_kept_exactly(shared_data, tmp_path, store):
    with gzip.open(shared_data / HH, "rb") as fh:
        lines = fh.read().splitlines()[:20]
    path = tmp_path / "ids.jsonl"
    path.write_bytes(b"\n".join(line[:-1] + b', "id": 18446744073709551615}' for line in lines) + b"\n")
    (res,) = ingest_paths(store, [str(path)])
    metas = {json.loads(m)["id"] for m in store.read("pairs").column("meta").to_pylist()}
    assert res.accepted == 20 and metas == {18446744073709551615}


# ----------------------------------------------------------------------------- item 17: --map
def test_map_pairs_with_an_input_and_unmapped_fields_kept(shared_data, tmp_path, store):
    """Instruction + input datasets map to pairs without losing the input, and the fields no target reads
    (the source's own ids) are kept in meta as every other reader keeps them."""
    rows = orjson.loads((shared_data / ALPACA).read_bytes())
    with_input = [r for r in rows if r["input"]][:30]
    pairs = [
        {"uid": f"ex-{i}", "instruction": r["instruction"], "input": r["input"], "good": r["output"],
         "bad": with_input[i - 1]["output"], "split": "train"}
        for i, r in enumerate(with_input)
    ]  # fmt: skip
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(p) for p in pairs) + b"\n")
    mapping = {"prompt": "instruction", "input": "input", "chosen": "good", "rejected": "bad"}
    (res,) = ingest_paths(store, [str(path)], IngestOptions(kind="pair", mapping=mapping))
    assert res.accepted == 30
    got = sorted(store.read("pairs").to_pylist(), key=lambda r: r["source_row"])
    for p, r in zip(pairs, got, strict=True):
        assert r["prompt"][-1]["content"] == f"{p['instruction']}\n\n{p['input']}"
        assert json.loads(r["meta"]) == {"uid": p["uid"], "split": "train"}


def test_map_nested_paths_keep_the_other_top_level_fields(shared_data, tmp_path, store):
    """Self-instruct's seed tasks: mapped from ``instances[0]``; ``id``, ``name`` and ``is_classification``
    stay in meta."""
    mapping = {"prompt": "instruction", "input": "instances[0].input", "response": "instances[0].output"}
    src = shared_data / "self-instruct" / "seed_tasks.jsonl"
    (res,) = ingest_paths(store, [str(src)], IngestOptions(kind="sft", mapping=mapping))
    assert res.accepted >= 170
    metas = [json.loads(m) for m in store.read("sft").column("meta").to_pylist()]
    assert all(set(m) == {"id", "name", "is_classification"} for m in metas)
    assert {m["id"] for m in metas} >= {"seed_task_0", "seed_task_1"}


# ----------------------------------------------------------------------------- item 18: accounting
def test_accounting_columns_reconcile_in_the_table_and_stats(shared_data, tmp_path):
    """Rows quarantined at read (not JSON, no records can be made) and records quarantined by validation
    are two columns, so rows read, records, accepted and duplicates add up on the screen; the same numbers
    for a file already ingested and in `curate stats`."""
    rows = orjson.loads((shared_data / ALPACA).read_bytes())
    lines = [orjson.dumps(r) for r in rows]
    lines[100:100] = [b'{"instruction": "cut', b'{"input": "no instruction"}', b"[1, 2]"]  # read-time
    lines[500:500] = [orjson.dumps(rows[3] | {"output": "x" * 30_000})]  # fails validation: too long
    path = tmp_path / "alpaca.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    store = str(tmp_path / "store")
    runner = CliRunner()
    for note in ("", "already ingested"):
        res = runner.invoke(app, ["ingest", str(path), "--store", store, "--no-near-dedup"])
        assert res.exit_code == 0, res.output
        line = next(x for x in res.output.splitlines() if "alpaca.jsonl" in x and "│" in x)
        cells = [c.strip() for c in line.split("│")][5:12]
        read, rows_q, records, accepted, records_q, dups = map(int, cells[:6])
        assert (read, rows_q, records, accepted, records_q, dups) == (1003, 3, 1000, 985, 1, 14)
        assert read - rows_q == records and records == accepted + records_q + dups and cells[6] == note
    stats = " ".join(runner.invoke(app, ["stats", "--store", store]).output.split())
    assert "rows_quarantined" in stats and "records_quarantined" in stats


def test_odd_file_names_are_ingested_and_printed_as_data(shared_data, tmp_path):
    """A file name that starts with a bracket or holds non-ASCII letters used to make a source name the
    store refuses, which stopped the run; a name that looks like terminal markup is printed as it is."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "[bold]x.jsonl").write_bytes((shared_data / SFT).read_bytes())
    (folder / "données.jsonl").write_bytes((shared_data / SFT).read_bytes()[:20_000].rsplit(b"\n", 1)[0])
    bad, _ = _damaged("truncated .jsonl.gz", shared_data, tmp_path)
    (folder / "[red]cut.jsonl.gz").write_bytes(bad.read_bytes())
    res = CliRunner().invoke(app, ["ingest", str(folder), "--store", str(tmp_path / "s"), "--no-near-dedup"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "[bold]x.jsonl" in text and "[red]cut.jsonl.gz" in text, res.output
    assert "not ingested: " in text and "NOT INGESTED" in text
    sources = {r.source for r in ingest_paths(Store(tmp_path / "s"), [str(folder)])}
    assert sources == {"bold_x", "donn_es", "red_cut"}
