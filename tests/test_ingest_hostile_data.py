"""Hostile and odd data files through ingest (issue 23, round three: data). Real rows from ../shared/data
throughout; each test failed on the code before its fix (docs/reliability.md, "Round three: data")."""

from __future__ import annotations

import bz2
import csv
import datetime as dt
import decimal
import gzip
import io
import json
import lzma
import os
import signal
import subprocess
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.core.store import Store
from curation.ingest import sources
from curation.ingest.pipeline import IngestOptions, ingest_paths

HH = "hh-rlhf/harmless-base-test.jsonl.gz"


def _hh(shared: Path, n: int) -> list[dict]:
    with gzip.open(shared / HH, "rt") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _meta(store: Store) -> list[dict]:
    (unit,) = store.root.glob("ingest/*/pair.parquet")
    return [json.loads(m) for m in pq.read_table(unit, columns=["meta"]).column("meta").to_pylist()]


# ----------------------------------------------------------------------------- Arrow types in Parquet
def _every_parquet_type(n: int) -> dict[str, pa.Array]:
    """An extra column of each Arrow type a Parquet file can hold, nested maps included."""
    text_map = pa.map_(pa.string(), pa.string())
    return {
        "int8": pa.array(range(n), pa.int8()),
        "uint64": pa.array([2**64 - 1] * n, pa.uint64()),
        "float16": pa.array([1.5] * n, pa.float32()).cast(pa.float16()),
        "decimal": pa.array([decimal.Decimal("1.10")] * n, pa.decimal128(5, 2)),
        "date": pa.array([dt.date(2024, 1, 1)] * n),
        "timestamp": pa.array([dt.datetime(2024, 1, 1)] * n, pa.timestamp("ms", tz="UTC")),
        "fixed_binary": pa.array([b"ab"] * n, pa.binary(2)),
        "null": pa.nulls(n),
        "fixed_list": pa.array([[1, 2]] * n, pa.list_(pa.int64(), 2)),
        "dictionary": pa.array(["x"] * n).dictionary_encode(),
        "map": pa.array([[("a", 1)]] * n, pa.map_(pa.string(), pa.int64())),
        "map_of_text": pa.array([[("k", "v"), ("k2", "w")]] * n, text_map),
        "list_of_maps": pa.array([[[("k", "v")]]] * n, pa.list_(text_map)),
        "struct_with_map": pa.array([{"m": [("k", "v")]}] * n, pa.struct([("m", text_map)])),
    }


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_parquet_extra_columns_of_every_type_are_read_and_kept(shared_data, tmp_path, block_path):
    """A map column (a Hugging Face dataset with a dict feature of free keys) stopped ingest with a
    traceback: Arrow has no flatten kernel for maps, so sizing the row's text raised
    ArrowNotImplementedError, on both paths."""
    rows = _hh(shared_data, 12)
    for name, values in _every_parquet_type(len(rows)).items():
        path = tmp_path / f"hh_{name}.parquet"
        table = pa.table({"chosen": [r["chosen"] for r in rows], "rejected": [r["rejected"] for r in rows]})
        pq.write_table(table.append_column(name, values), path, row_group_size=5)
        store = Store(tmp_path / f"store_{name}")
        (res,) = ingest_paths(store, [str(path)], IngestOptions(block_path=block_path))
        assert res.error is None, (name, res.error)
        assert (res.rows_read, res.accepted, res.quarantined) == (12, 12, 0), name
        assert all(name in m for m in _meta(store)), name
    assert _meta(Store(tmp_path / "store_map_of_text"))[0]["map_of_text"] == [["k", "v"], ["k2", "w"]]


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_a_map_value_over_the_row_limit_is_quarantined_by_its_size(shared_data, tmp_path, block_path):
    """The text inside a map counts towards the row limit, in slices of a batch too (only that row)."""
    rows = _hh(shared_data, 30)
    limit = 16 * 1024 * 1024
    big = 3  # the row whose map holds a value over the limit
    tags = [[("note", "x" * (limit + 10) if i == big else f"row {i}")] for i in range(len(rows))]
    table = pa.table(
        {
            "chosen": [r["chosen"] for r in rows],
            "rejected": [r["rejected"] for r in rows],
            "tags": pa.array(tags, pa.map_(pa.string(), pa.string())),
        }
    )
    path = tmp_path / "hh_tags.parquet"
    pq.write_table(table, path, row_group_size=7)
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(block_path=block_path))
    assert (res.rows_read, res.accepted, res.quarantined) == (30, 29, 1)
    assert sorted(m["tags"][0][1] for m in _meta(store)) == sorted(f"row {i}" for i in range(30) if i != big)


# ----------------------------------------------------------------------------- two system prompts
DPO = "llama-factory/dpo_en_demo.json"


def _system_variants(shared: Path) -> tuple[list[dict], list[int]]:
    """Real DPO rows whose conversation opens with a system turn, each also given a ``system`` field: the
    same text, the same with spaces around it, or another text; then the untouched rows. Returns the rows and
    the indices of those with two different system prompts."""
    rows = json.loads((shared / DPO).read_text())
    with_turn = [r for r in rows if r["conversations"][0]["from"] == "system"][:4]
    assert len(with_turn) == 4
    out, clash = [], []
    for r in with_turn:
        own = r["conversations"][0]["value"]
        for system in (own, f"  {own}\n", "You are a pirate. Answer like one.", "You are a lawyer."):
            out.append({**r, "system": system})
            if system.strip() != own.strip():
                clash.append(len(out) - 1)
    return out + [r for r in rows if r not in with_turn][:40], clash


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
@pytest.mark.parametrize("reader", ["sharegpt_pair", "sharegpt"])
def test_a_system_field_that_contradicts_the_system_turn_is_quarantined(
    shared_data, tmp_path, block_path, reader
):
    """The ``system`` field was dropped without a trace when the conversation opened with a system turn of
    its own, so rows that differed only in it (a pirate, a lawyer) were counted as duplicates of one row."""
    rows, clash = _system_variants(shared_data)
    if reader == "sharegpt":  # the same conversations as SFT: the chosen reply closes each
        rows = [
            {
                k: v
                for k, v in {**r, "conversations": [*r["conversations"], r["chosen"]]}.items()
                if k != "chosen"
            }
            for r in rows
        ]
        rows = [{k: v for k, v in r.items() if k != "rejected"} for r in rows]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(reader=reader, block_path=block_path))
    quarantine = pq.read_table(next(store.root.glob("ingest/*/quarantine.parquet"))).to_pylist()
    assert sorted(q["source_row"] for q in quarantine) == clash
    assert {q["field"] for q in quarantine} == {"system"}
    assert all("two different system prompts" in q["reason"] for q in quarantine)
    # the same text (with or without spaces around it) is one system prompt: kept once, then a duplicate
    assert res.accepted + res.duplicates == len(rows) - len(clash)
    assert res.duplicates >= 4


# ----------------------------------------------------------------------------- the same text, twice
def _lookalike_pairs(shared: Path) -> tuple[list[dict], list[int]]:
    """Real DPO rows whose rejected reply is made the chosen one but for spaces, line ends, zero-width
    characters or Unicode form; and controls that differ in a word or in where a space is. Returns the rows
    and the indices of the look-alikes."""
    rows = json.loads((shared / DPO).read_text())[:60]
    variants = [
        lambda t: t + "  \n",
        lambda t: t.replace(" ", "  ", 5),
        lambda t: t.replace("\n", "\r\n") + "\n",
        lambda t: "\u200b" + t.replace(" ", " \u200b", 3),
        lambda t: unicodedata.normalize("NFD", t),  # the rejected reply opens with accents (below)
        lambda t: "\u3000" + t,
    ]
    out, same = [], []
    for i, make in enumerate(variants):
        r = json.loads(json.dumps(rows[i]))
        if i == 4:
            r["rejected"]["value"] = "Café, déjà vu. " + r["rejected"]["value"]
        r["chosen"]["value"] = make(r["rejected"]["value"])
        out.append(r)
        same.append(len(out) - 1)
    word = json.loads(json.dumps(rows[10]))
    word["chosen"]["value"] = word["rejected"]["value"] + " Indeed."
    space = json.loads(json.dumps(rows[11]))
    space["rejected"]["value"] = "ab " + space["rejected"]["value"]
    space["chosen"]["value"] = "a b " + space["rejected"]["value"][3:]
    return out + [word, space] + rows[20:60], same


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_chosen_equal_to_rejected_but_for_spaces_or_unicode_form_is_quarantined(
    shared_data, tmp_path, block_path
):
    """A pair whose responses differed only in trailing spaces, doubled spaces, CRLF, a zero-width space or
    NFD against NFC was accepted: a preference for whitespace."""
    rows, same = _lookalike_pairs(shared_data)
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows))
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(block_path=block_path))
    quarantine = pq.read_table(next(store.root.glob("ingest/*/quarantine.parquet"))).to_pylist()
    assert sorted(q["source_row"] for q in quarantine) == same
    assert all(q["reason"].startswith("chosen == rejected") for q in quarantine)
    assert res.accepted + res.duplicates == len(rows) - len(same)


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_a_ranking_holding_one_text_twice_with_two_grades_is_quarantined(shared_data, tmp_path, block_path):
    """A ranking that grades the same reply (spaces aside) both high and low put a response above itself;
    it was accepted. The same reply twice with one grade is a tie, and stays."""
    trees = [json.loads(line) for line in (shared_data / "oasst/en_100_tree.jsonl").read_text().splitlines()]
    rows = []
    for t in trees[:30]:
        replies = [r["text"] for r in t["prompt"]["replies"]][:3]
        if len(replies) >= 2:
            rows.append(
                {
                    "prompt": t["prompt"]["text"],
                    "completions": [{"response": x, "score": 3 - i} for i, x in enumerate(replies)],
                }
            )
    first, second = rows[0], rows[1]
    first["completions"].append({"response": first["completions"][0]["response"] + " \n", "score": 0})
    second["completions"].append({"response": second["completions"][1]["response"], "score": 2})
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(reader="completions", block_path=block_path))
    quarantine = pq.read_table(next(store.root.glob("ingest/*/quarantine.parquet"))).to_pylist()
    assert [(q["source_row"], q["reason"]) for q in quarantine] == [
        (0, "the same candidate text twice with different grades")
    ]
    assert res.accepted + res.duplicates == len(rows) - 1


def test_a_ranking_graded_by_two_kinds_of_grade_is_quarantined(shared_data, tmp_path):
    """One candidate with a ``score``, another with a ``rank``: every grade was read as a rank (lower is
    better), so the reply scored 9 went below the one ranked 1, silently; a ``rating`` beside a ``score``
    was put on one scale."""
    outputs = json.loads((shared_data / "alpaca-eval/gpt-3.5-turbo-1106.annotations.json").read_text())[:12]
    rows = [
        {
            "prompt": o["instruction"],
            "completions": [{"response": o["output_1"], "score": 2}, {"response": o["output_2"], "score": 7}],
        }
        for o in outputs
    ]
    rows[3]["completions"][1] = {"response": outputs[3]["output_2"], "rank": 1}
    rows[5]["completions"][0] = {"response": outputs[5]["output_1"], "rating": 9}
    path = tmp_path / "graded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)])
    assert res.reader == "completions"
    quarantine = pq.read_table(next(store.root.glob("ingest/*/quarantine.parquet"))).to_pylist()
    assert [(q["source_row"], q["field"]) for q in quarantine] == [
        (3, "completions[1].rank"),
        (5, "completions[1].score"),
    ]
    assert all("one ranking takes one kind of grade" in q["reason"] for q in quarantine)
    assert res.accepted == 10


# ----------------------------------------------------------------------------- encodings, compressions
def _hh_text(shared: Path, n: int = 40) -> str:
    with gzip.open(shared / HH, "rt") as fh:
        return "".join(next(fh) for _ in range(n))


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_bz2_and_xz_inputs_are_read_like_gzip(shared_data, tmp_path, block_path):
    """A .jsonl.bz2 or .jsonl.xz was "cannot tell the format" (and a folder's were skipped by name); now
    they are read as they stream, the same rows as the .gz; a truncated one is a damaged file."""
    text = _hh_text(shared_data).encode()
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(text))
    (folder / "b.jsonl.bz2").write_bytes(bz2.compress(text))
    (folder / "c.jsonl.xz").write_bytes(lzma.compress(text))
    (folder / "d.jsonl.xz").write_bytes(lzma.compress(text)[:-40])  # truncated
    results = ingest_paths(Store(tmp_path / "store"), [str(folder)], IngestOptions(block_path=block_path))
    got = {Path(r.source_file).name: r for r in results}
    assert set(got) == {"a.jsonl.gz", "b.jsonl.bz2", "c.jsonl.xz", "d.jsonl.xz"}
    assert [got[n].source for n in ("b.jsonl.bz2", "c.jsonl.xz")] == ["b", "c"]
    assert (got["a.jsonl.gz"].accepted, got["a.jsonl.gz"].error) == (40, None)
    for name in ("b.jsonl.bz2", "c.jsonl.xz"):  # the same rows: duplicates of a's
        assert (got[name].rows_read, got[name].duplicates, got[name].error) == (40, 40, None)
    assert "cannot be read to the end" in got["d.jsonl.xz"].error
    assert got["d.jsonl.xz"].unit == ""


def _not_utf8_files(shared: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """Real rows in encodings and containers curate does not read, with a word each error must hold."""
    text = _hh_text(shared, 10)
    rows = [json.loads(line) for line in text.splitlines()]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerows([["chosen", "rejected"], *[[r["chosen"], r["rejected"]] for r in rows]])
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("hh.jsonl", text)
    made = {
        "utf16.jsonl": (text.encode("utf-16"), "UTF-16"),
        "utf16be.jsonl": (b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16"),
        "utf16_no_bom.jsonl": (text.encode("utf-16-le"), "UTF-16"),
        "utf32.jsonl": (text.encode("utf-32"), "UTF-32"),
        "excel_unicode.csv": (buf.getvalue().encode("utf-16"), "UTF-16"),
        "utf16.jsonl.gz": (gzip.compress(text.encode("utf-16")), "UTF-16"),
        "hh.jsonl.zst": (b"\x28\xb5\x2f\xfd" + b"\x00" * 64, "zstd"),
        "hh.zip": (zipped.getvalue(), "ZIP"),
    }
    out = {}
    for name, (data, word) in made.items():
        (tmp / name).write_bytes(data)
        out[name] = (tmp / name, word)
    return out


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
def test_text_that_is_not_utf8_is_refused_by_name_and_the_other_files_go_in(
    shared_data, tmp_path, block_path
):
    """A UTF-16 file (Excel's "Unicode text", PowerShell's default) said "no readable row to detect the
    format" (or, with --reader, quarantined every line as invalid UTF-8 and exited 0); a .zst said "cannot
    tell the format; pass --format". Now each names its encoding or container and how to convert it."""
    files = _not_utf8_files(shared_data, tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text(_hh_text(shared_data, 10))
    for reader in ("auto", "hh"):
        store = Store(tmp_path / f"store_{reader}")
        paths = [str(good), *(str(p) for p, _ in files.values())]
        got = {
            Path(r.source_file).name: r
            for r in ingest_paths(store, paths, IngestOptions(reader=reader, block_path=block_path))
        }
        assert got["good.jsonl"].accepted == 10
        for name, (_, word) in files.items():
            if name.endswith(".csv") and reader == "hh":
                continue  # (the CSV is read as CSV only by its name: covered with reader auto)
            assert got[name].error is not None and word in got[name].error, (reader, name, got[name].error)
            assert got[name].unit == "" and got[name].accepted == 0


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("empty.jsonl.gz", gzip.compress(b""), "no rows"),
        ("zero.jsonl.gz", b"", "no rows"),
        ("header_only.csv", b"chosen,rejected\r\n", "no rows"),
        ("pairs_as_arrays.json", b'[["a", "b"], ["c", "d"]]', "row 0: expected a JSON object, got list"),
        ("mac.jsonl", b'{"chosen": "a"}\r{"chosen": "b"}\r', "lone CR"),
    ],
    ids=["empty-gzip", "zero-bytes", "csv-header-only", "json-array-of-arrays", "lone-cr-line-ends"],
)
def test_a_file_without_one_readable_row_says_why(tmp_path, name, data, words):
    """These all said "no readable row to detect the format from; pass --reader", which hid the reason
    (and, for an empty file, asked for a reader it does not need)."""
    path = tmp_path / name
    path.write_bytes(data)
    (res,) = ingest_paths(Store(tmp_path / "store"), [str(path)])
    assert res.error is not None and words in res.error, res.error


# ----------------------------------------------------------------------------- CSV dialects
GSM8K = "gsm8k/test.jsonl"


@pytest.mark.parametrize(
    ("name", "delimiter"), [("q.tsv", "\t"), ("q.csv", ";"), ("pipes.csv", "|"), ("c.csv", ",")]
)
def test_csv_separated_by_tabs_semicolons_or_pipes_reads_every_row(shared_data, tmp_path, name, delimiter):
    """GSM8K written with ``;`` (a locale whose decimal mark is a comma) or as TSV: 20 rows with multi-line
    answers became 95 quarantined "rows" and exit 0 (and a .tsv was "cannot tell the format")."""
    rows = [json.loads(line) for line in (shared_data / GSM8K).read_text().splitlines()[:20]]
    path = tmp_path / name
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerows([["question", "answer"], *[[r["question"], r["answer"]] for r in rows]])
    store = Store(tmp_path / "store")
    opts = IngestOptions(kind="sft", mapping={"prompt": "question", "response": "answer"})
    (res,) = ingest_paths(store, [str(path)], opts)
    assert (res.rows_read, res.accepted, res.quarantined) == (20, 20, 0)
    (unit,) = store.root.glob("ingest/*/sft.parquet")
    messages = pq.read_table(unit, columns=["messages"]).column("messages").to_pylist()
    assert [[m["content"] for m in ms] for ms in messages] == [[r["question"], r["answer"]] for r in rows]


# ----------------------------------------------------------------------------- SIGTERM
REPO = Path(__file__).resolve().parents[1]


def test_sigterm_during_ingest_cleans_up_like_ctrl_c_and_the_rerun_finishes(shared_data, tmp_path):
    """SIGTERM (``timeout``, ``docker stop``, systemd) killed `curate ingest` on the spot: the half-written
    staging folder stayed until the next writer, exit status -15. Now it stops as Ctrl-C does: the staging
    folder is removed at once, no unit of the file looks committed, exit 143; the rerun ingests it all."""
    with gzip.open(shared_data / HH, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    big = tmp_path / "hh_many.jsonl"
    with big.open("w") as out:
        for k in range(6):  # 13,872 distinct real rows: a few seconds of work
            for r in rows:
                out.write(
                    json.dumps({"chosen": r["chosen"] + f" ({k})", "rejected": r["rejected"] + f" [{k}]"})
                    + "\n"
                )
    root = tmp_path / "store"
    cmd = [sys.executable, "-m", "curation.cli", "ingest", str(big), "--store", str(root), "--no-near-dedup"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not any((root / ".staging").glob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "ingest ended before it could be interrupted"
    time.sleep(0.2)  # its staging folder is made as the file starts: inside the file
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list((root / ".staging").iterdir()) == []
    assert not list(root.glob("ingest/*"))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (res,) = ingest_paths(Store(root), [str(big)])  # already ingested: its accounting
    assert res.skipped and res.accepted == 6 * len(rows)


# ----------------------------------------------------------------------------- a file edited after ingest
def test_a_file_edited_after_ingest_is_flagged_as_a_second_version(shared_data, tmp_path):
    """Editing an ingested file and ingesting it again made a second unit silently: the earlier version's
    rows (the one fixed, the one deleted) stayed current beside the new ones with nothing to say so."""
    from typer.testing import CliRunner

    from curation.cli import app

    rows = _hh(shared_data, 30)
    data = tmp_path / "hh.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "store"
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", str(data), "--store", str(store), "--reader", "hh"])
    assert first.exit_code == 0, first.output
    assert "ingested before" not in first.output
    (old,) = [u.name for u in (store / "ingest").iterdir()]

    rows[3]["chosen"] += " (fixed)"  # the user fixes one row and deletes another
    data.write_text("".join(json.dumps(r) + "\n" for i, r in enumerate(rows) if i != 7))
    other = tmp_path / "other.jsonl"  # another file of the same source is not a version of this one
    other.write_text("".join(json.dumps(r) + "\n" for r in _hh(shared_data, 40)[30:]))
    again = runner.invoke(
        app, ["ingest", str(data), str(other), "--store", str(store), "--reader", "hh", "--source", "hh"]
    )
    assert again.exit_code == 0, again.output
    note = " ".join(again.output.split())
    assert f"hh.jsonl was ingested before with other content (unit {old})" in note, note
    assert "other.jsonl was ingested before" not in note
    assert note.count("ingested before with other content") == 1
    (new,) = {u.name for u in (store / "ingest").iterdir()} - {
        old,
        *(u.name for u in _units_of(store, other)),
    }
    # the file edited back to its first version is skipped as already ingested, and both versions are
    # still in the store: said again, naming the other one
    data.write_text("".join(json.dumps(r) + "\n" for r in _hh(shared_data, 30)))
    back = runner.invoke(
        app, ["ingest", str(data), "--store", str(store), "--reader", "hh", "--source", "hh"]
    )
    assert back.exit_code == 0 and "already ingested" in back.output, back.output
    assert f"ingested before with other content (unit {new})" in " ".join(back.output.split()), back.output


def _units_of(store: Path, path: Path) -> list[Path]:
    """The units read from ``path`` (by their accounting row)."""
    return [
        u
        for u in (store / "ingest").iterdir()
        if pq.read_table(u / "run.parquet").column("source_file").to_pylist()[0] == str(path)
    ]


# ----------------------------------------------------------------------------- a key given twice
def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _rows_with_repeated_keys(shared: Path) -> tuple[list[str], dict[int, str], dict[int, dict]]:
    """JSON texts of 30 real DPO rows (ShareGPT pairs), four of them with a key given twice: at the top
    level, inside a turn, inside the chosen reply and in an extra field. Two controls hold text that looks
    like a key (``"x": 1`` and ``"x" : 1``) in a string. Returns the texts, {row: the field named} and
    {row: the value each control must keep}."""
    rows = json.loads((shared / DPO).read_text())[:30]
    texts = [_dumps(r) for r in rows]
    conv, chosen, rejected = (_dumps(rows[2][k]) for k in ("conversations", "chosen", "rejected"))
    # the first "chosen" is another row's reply; every JSON reader kept the last one, silently
    texts[2] = (
        f'{{"conversations": {conv}, "chosen": {_dumps(rows[3]["chosen"])}, "rejected": {rejected}, '
        f'"chosen": {chosen}}}'
    )
    turn = rows[5]["conversations"][0]
    texts[5] = texts[5].replace(
        _dumps(turn), f'{{"from": "human", "value": "Ignore the rest.", "value": {_dumps(turn["value"])}}}', 1
    )
    reply = rows[9]["chosen"]
    texts[9] = texts[9].replace(
        _dumps(reply), f'{{"from": "human", "from": "gpt", "value": {_dumps(reply["value"])}}}'
    )
    texts[12] = texts[12][:-1] + ', "id": 12, "id": 13}'
    controls = {}
    for i, said in ((15, '"x": 1'), (16, '"x" : 1, "y"\t:\n2')):
        row = json.loads(texts[i])
        row["chosen"]["value"] = f"Write it as {said} in the config. " + row["chosen"]["value"]
        texts[i] = _dumps(row)
        controls[i] = row
    bad = {2: "chosen", 5: "conversations[0].value", 9: "chosen.from", 12: "id"}
    assert all(t.count('"') > 4 for t in texts)
    return texts, bad, controls


def _write_rows(path: Path, texts: list[str]) -> None:
    if path.suffix == ".json":
        path.write_text("[\n" + ",\n".join(texts) + "\n]\n")
    elif path.suffix == ".gz":
        path.write_bytes(gzip.compress("".join(t + "\n" for t in texts).encode()))
    else:
        path.write_text("".join(t + "\n" for t in texts))


@pytest.mark.parametrize("block_path", [True, False], ids=["arrow-path", "row-path"])
@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz", "pairs.json"])
def test_a_key_given_twice_in_one_object_is_quarantined_naming_it(shared_data, tmp_path, block_path, name):
    """``{"chosen": a, ..., "chosen": b}`` (or a key twice inside a turn) was read as b on every path, the
    other value lost without a trace. Text in a string that looks like a key is not taken for one."""
    texts, bad, controls = _rows_with_repeated_keys(shared_data)
    path = tmp_path / name
    _write_rows(path, texts)
    store = Store(tmp_path / "store")
    (res,) = ingest_paths(store, [str(path)], IngestOptions(block_path=block_path))
    assert res.error is None, res.error
    quarantine = pq.read_table(next(store.root.glob("ingest/*/quarantine.parquet"))).to_pylist()
    assert {q["source_row"]: q["field"] for q in quarantine} == bad
    for q in quarantine:
        key = bad[q["source_row"]].rsplit(".", 1)[-1].split("]")[-1]
        assert f"key '{key}' given twice in one object" in q["reason"], q["reason"]
    # nothing is lost: the quarantined text holds both values
    raw = {q["source_row"]: q["raw"] for q in quarantine}
    assert (
        "Ignore the rest." in raw[5]
        and json.loads(texts[5])["conversations"][0]["value"]
        in json.loads(raw[5])["conversations"][0]["value"]
    )
    assert '"id": 12' in raw[12] and '"id": 13' in raw[12]
    assert res.accepted + res.duplicates == len(texts) - len(bad)
    assert sources._needs_exact(texts[16].encode(), json.loads(texts[16]))  # resolved by the exact parse
    (unit,) = store.root.glob("ingest/*/pair.parquet")
    kept = {c[-1]["content"] for c in pq.read_table(unit, columns=["chosen"]).column("chosen").to_pylist()}
    assert {r["chosen"]["value"] for r in controls.values()} <= kept


def test_a_key_given_twice_in_a_json_wrapper_refuses_the_file(shared_data, tmp_path):
    """``{"data": [...], "data": [...]}``: which list is the data cannot be known; the file is refused by
    name (the other files go in), and a record inside a wrapper is checked as in an array."""
    texts, bad, _ = _rows_with_repeated_keys(shared_data)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"data": [' + ", ".join(texts) + '], "version": 1}')
    twice = tmp_path / "twice.json"
    twice.write_text('{"data": [' + ", ".join(texts[20:]) + '], "data": [' + ", ".join(texts[:20]) + "]}")
    store = Store(tmp_path / "store")
    results = {
        Path(r.source_file).name: r for r in ingest_paths(store, [str(wrapped), str(twice)], IngestOptions())
    }
    assert results["wrapped.json"].error is None
    assert results["wrapped.json"].quarantined == len(bad)
    error = results["twice.json"].error
    assert error is not None and "twice.json" in error and "key 'data' given twice in one object" in error, (
        error
    )


def test_the_arrow_reader_refuses_a_repeated_key_so_the_batch_goes_line_by_line(shared_data, tmp_path):
    """The block path trusts ``pyarrow.json`` to refuse a key given twice (at any depth); a pyarrow that
    took the last value instead would make the fast path differ from the row path."""
    from curation.ingest.blocks import ArrowBatch, read_batches
    from curation.ingest.readers import BY_NAME

    texts, bad, _ = _rows_with_repeated_keys(shared_data)
    schema = BY_NAME["sharegpt_pair"]().block_schema([json.loads(t) for t in texts])
    assert schema is not None
    for row in bad:
        path = tmp_path / f"r{row}.jsonl"
        _write_rows(path, [texts[0], texts[row], texts[1]])
        (batch,) = read_batches(path, 100, schema)
        assert not isinstance(batch, ArrowBatch), row
        assert [r.field for r in batch] == ["row", bad[row], "row"]
    clean = tmp_path / "clean.jsonl"
    _write_rows(clean, [texts[0], texts[1]])
    assert isinstance(next(read_batches(clean, 100, schema)), ArrowBatch)


class _Obj(list):
    """An object as the pairs of its text (a key may repeat)."""


_tricky = st.text(alphabet='ab"\\: \t\n{}[],', max_size=6)
_trees = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _tricky,
    lambda kids: st.lists(kids, max_size=3) | st.lists(st.tuples(_tricky, kids), max_size=4).map(_Obj),
    max_leaves=12,
)


def _text(tree: object, space: str) -> str:
    if isinstance(tree, _Obj):
        return "{" + ", ".join(f"{json.dumps(k)}{space}:{space}{_text(v, space)}" for k, v in tree) + "}"
    if isinstance(tree, list):
        return "[" + ", ".join(_text(v, space) for v in tree) + "]"
    return json.dumps(tree)


def _twice(tree: object) -> bool:
    if isinstance(tree, _Obj):
        keys = [k for k, _ in tree]
        return len(set(keys)) < len(keys) or any(_twice(v) for _, v in tree)
    return isinstance(tree, list) and any(_twice(v) for v in tree)


def _too_wide(tree: object) -> bool:
    if isinstance(tree, list):
        return any(_too_wide(v[1] if isinstance(tree, _Obj) else v) for v in tree)
    return isinstance(tree, int) and not isinstance(tree, bool) and not -(2**63) <= tree <= 2**64 - 1


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_tricky, _trees), max_size=4).map(_Obj), st.sampled_from(["", " ", "\t", "\n "]))
def test_a_repeated_key_is_found_at_any_depth_and_never_invented(tree, space):
    """The prefilter (key ends in the text against keys parsed) is sound: every object with a key given
    twice is found, whatever strings look like keys or whitespace stands before a colon, and a row
    without one reads as orjson reads it."""
    text = _text(tree, space)
    row = sources.decode_line(text.encode(), 0)
    if _twice(tree):
        assert row.error is not None and "given twice in one object" in row.error, (text, row.error)
    elif _too_wide(tree):
        assert row.error is not None and "does not fit in 64 bits" in row.error
    else:
        assert row.error is None and row.value == json.loads(text)
