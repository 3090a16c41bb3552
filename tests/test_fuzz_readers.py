"""Hostile input: readers and sources never crash; every row ends accepted, duplicate or quarantined with a reason."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curation import catalog
from curation.core.store import Store
from curation.ingest.pipeline import IngestOptions, ingest_paths
from curation.ingest.readers import BY_NAME, MappingReader
from curation.ingest.readers.base import RowError

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=15),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = [
    "chosen", "rejected", "prompt", "messages", "conversations", "from", "value", "role", "content",
    "instruction", "input", "output", "output_1", "output_2", "preference", "question", "ground_truth",
    "is_correct", "solution", "replies", "text", "rank", "completions", "response", "score", "system",
    "history", "tool_calls", "type", "label", "answer",
]  # fmt: skip
ROLES = ["human", "gpt", "user", "assistant", "system", "tool", "observation", "function_call", "bogus", ""]
near_valid = st.recursive(
    st.one_of(
        json_scalar, st.sampled_from(ROLES), st.sampled_from(["\n\nHuman: hi", "\n\nAssistant: yo", ""])
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=25,
)
rows = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), near_valid, max_size=6),
    st.dictionaries(st.text(max_size=5), json_value),
)

MAPPED = [
    MappingReader("sft", {"prompt": "question", "response": "answer", "input": "input[0].x"}),
    MappingReader("sft", {"messages": "messages", "role_key": "from", "content_key": "value"}),
    MappingReader(
        "pair", {"prompt": "prompt", "response_a": "chosen", "response_b": "rejected", "label": "label"}
    ),
    MappingReader("pair", {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "strength": "score"}),
    MappingReader("ranking", {"prompt": "prompt", "candidates": "completions", "candidate_text": "text", "candidate_grade": "score"}),
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_readers_only_raise_row_errors(row):
    """Any JSON-like row: every reader returns records of its kind or raises RowError, nothing else."""
    for reader in [cls() for cls in BY_NAME.values() if cls is not MappingReader] + MAPPED:
        try:
            out = reader.convert(row)
        except RowError as exc:
            assert exc.field and exc.reason
            continue
        for rec in out:
            if reader.kind == "sft":
                assert all(isinstance(m["content"], str) for m in rec["messages"])
            elif reader.kind == "pair":
                assert rec["chosen"] and rec["rejected"] and rec["prompt"]
            else:
                assert all(isinstance(c["grade"], int) for c in rec["candidates"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=5))
def test_nan_and_infinite_grades_never_crash(scores):
    reader = BY_NAME["completions"]()
    row = {"prompt": "p", "completions": [{"response": f"r{i}", "score": s} for i, s in enumerate(scores)]}
    try:
        (rec,) = reader.convert(row)
    except RowError as exc:
        assert any(math.isnan(s) for s in scores) and "not NaN" in exc.reason
        return
    grades = [c["grade"] for c in rec["candidates"]]
    for a, ga in zip(scores, grades, strict=True):
        for b, gb in zip(scores, grades, strict=True):
            assert (a > b) == (ga > gb) and (a == b) == (ga == gb)


HOSTILE_LINES = st.one_of(
    st.builds(
        lambda r: orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY), rows.filter(lambda r: _encodable(r))
    ),
    st.sampled_from(
        [
            b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: b"}',
            b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: a"}',
            b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: ", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: b"}',
            b'{"chosen": "\\n\\nAssistant: a\\n\\nHuman: hi", "rejected": "\\n\\nHuman: x"}',
            b'{"chosen": "\\u0000\\n\\nHuman: a\\u0000\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\u0000\\n\\nAssistant: c"}',
            b'{"chosen": "\\ud800", "rejected": 5}',
            b'{"chosen": "\\n\\nHuman: \xff\xfe\\n\\nAssistant: a", "rejected": "x"}',
            b'{"chosen": ',
            b"not json at all",
            b"[1, 2, 3]",
            b"\xef\xbb\xbf{}",
            b"\x00\x00\x00",
            b"[" * 5000 + b"]" * 5000,
            b'{"a":' * 3000 + b"1" + b"}" * 3000,
            b'{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b", "x": {"y": [1]}}',
            b"",
            b"   ",
        ]
    ),
)


def _encodable(r) -> bool:
    try:
        orjson.dumps(r)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(HOSTILE_LINES, min_size=1, max_size=25),
    st.sampled_from(["auto", "hh", "messages", "sharegpt_pair"]),
    st.booleans(),
)
def test_hostile_jsonl_every_row_accounted(lines, reader, gz):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("in.jsonl.gz" if gz else "in.jsonl")
        data = b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n"
        path.write_bytes(gzip.compress(data) if gz else data)
        store = Store(Path(tmp) / "store")
        (res,) = ingest_paths(store, [str(path)], IngestOptions(reader=reader))
        nonblank = sum(1 for line in data[3:].split(b"\n") if line.strip())
        if res.error:  # the whole file is unreadable: said so, nothing half-written
            assert reader == "auto" and (
                "unknown layout" in res.error or "no readable row" in res.error or "no rows" in res.error
            )
            assert not store.files("ingest/*/run.parquet")
            return
        assert res.reconciles and res.rows_read == nonblank
        con = catalog.connect(store)
        try:
            q = con.sql("SELECT source_row, field, reason, raw FROM quarantine").fetchall()
            kept = con.sql(f"SELECT count(*) FROM {'pairs' if res.kind == 'pair' else 'sft'}").fetchall()[0][
                0
            ]
        finally:
            con.close()
        assert kept == res.accepted and len(q) == res.quarantined
        assert all(reason and field and raw is not None for _, field, reason, raw in q)
        assert all(0 <= row < len(lines) + 1 for row, *_ in q)


def test_csv_with_embedded_newlines_and_ragged_rows(tmp_path, store):
    path = tmp_path / "t.csv"
    path.write_text(
        'question,answer\n"line one\nline two","a, with comma\n\nand blank line"\n'
        'q2,a2,EXTRA\n"",empty question\n"q4","a ""quoted"" answer"\n',
        encoding="utf-8",
    )
    (res,) = ingest_paths(
        store, [str(path)], IngestOptions(kind="sft", mapping={"prompt": "question", "response": "answer"})
    )
    assert (res.rows_read, res.accepted, res.quarantined) == (4, 2, 2)
    con = catalog.connect(store)
    msgs = [m for (m,) in con.sql("SELECT messages FROM sft ORDER BY source_row").fetchall()]
    reasons = con.sql("SELECT source_row, reason FROM quarantine ORDER BY 1").fetchall()
    con.close()
    assert (
        msgs[0][0]["content"] == "line one\nline two"
        and msgs[0][1]["content"] == "a, with comma\n\nand blank line"
    )
    assert msgs[1][1]["content"] == 'a "quoted" answer'
    assert reasons[0][0] == 1 and "more fields than the header" in reasons[0][1]
    assert reasons[1][0] == 2 and reasons[1][1] == "empty text"


def test_parquet_with_wrong_types_and_nulls(tmp_path, store):
    t = pa.table(
        {
            "chosen": ["\n\nHuman: a\n\nAssistant: b", None, "\n\nHuman: a\n\nAssistant: c"],
            "rejected": ["\n\nHuman: a\n\nAssistant: x", "\n\nHuman: a\n\nAssistant: x", None],
        }
    )
    pq.write_table(t, tmp_path / "p.parquet")
    (res,) = ingest_paths(store, [str(tmp_path / "p.parquet")], IngestOptions(reader="hh"))
    assert (res.rows_read, res.accepted, res.quarantined) == (3, 1, 2)


BIG = r"""
import json, sys
from pathlib import Path
from curation.ingest.pipeline import ingest_paths
from curation.core.store import Store
f, root = Path(sys.argv[1]), Path(sys.argv[2])
(res,) = ingest_paths(Store(root), [str(f)])
q = Store(root).read("quarantine").to_pylist()
print(json.dumps({"accepted": res.accepted, "quarantined": res.quarantined, "reconciles": res.reconciles,
                  "reason": q[0]["reason"], "raw_len": len(q[0]["raw"]),
                  "file_mb": f.stat().st_size / 1e6,
                  # VmHWM is this process's own peak: ru_maxrss survives exec and would report pytest's
                  "peak_mb": int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))) / 1024}))
"""


def _write_big(f, kind: str) -> None:
    """The hostile file, written by the test process so the ingesting process's peak memory is its own."""
    with open(f, "w") as fh:
        if kind == "row50mb":
            fh.write(
                json.dumps(
                    {
                        "chosen": "\n\nHuman: hi\n\nAssistant: " + "x" * 50_000_000,
                        "rejected": "\n\nHuman: hi\n\nAssistant: no",
                    }
                )
                + "\n"
            )
            fh.write(
                json.dumps(
                    {"chosen": "\n\nHuman: hi\n\nAssistant: ok", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
                )
                + "\n"
            )
        else:
            turn = '{"role": "user", "content": "t"}, {"role": "assistant", "content": "t"}'
            fh.write('{"messages": [' + ", ".join([turn] * 500_000) + "]}\n")
            fh.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
                )
                + "\n"
            )


@pytest.mark.slow
@pytest.mark.parametrize("case", ["row50mb", "turns1m"])
def test_huge_rows_are_quarantined_with_bounded_memory(case, tmp_path):
    big = tmp_path / "big.jsonl"
    _write_big(big, case)
    cmd = [sys.executable, "-c", BIG, str(big), str(tmp_path / "store")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["reconciles"] and r["accepted"] == 1 and r["quarantined"] == 1
    assert "larger than the 16777216-byte limit; not parsed" in r["reason"]
    assert r["raw_len"] < 1_100_000  # the raw text kept in quarantine is capped, with a pointer to the file
    # bounded by a multiple of the largest row (Python objects for a parsed row), on top of the libraries
    assert r["peak_mb"] < 500 + 20 * r["file_mb"], r


def test_conversation_over_the_turn_cap_is_quarantined(tmp_path, store):
    turn = '{"role": "user", "content": "t"}, {"role": "assistant", "content": "t"}'
    f = tmp_path / "long.jsonl"
    f.write_text('{"messages": [' + ", ".join([turn] * 5_001) + "]}\n")
    (res,) = ingest_paths(store, [str(f)])
    assert (res.rows_read, res.accepted, res.quarantined) == (1, 0, 1)
    assert "10002 turns, more than 10000" in store.read("quarantine").column("reason")[0].as_py()


@pytest.mark.parametrize("depth", [10, 500, 3000])
def test_deeply_nested_extra_fields_never_crash(depth, tmp_path, store):
    """Arrow parses thousands of nesting levels; curate compares at most 64 of them and leaves deeper rows
    to the line path: orjson reads up to 1024 levels and writes up to 254, so deeper rows are quarantined."""
    hh = '"chosen": "\\n\\nHuman: q{i}\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q{i}\\n\\nAssistant: b"'
    deep = '{"a":' * depth + "1" + "}" * depth
    f = tmp_path / "deep.jsonl"
    rows = ["{" + hh.format(i=i) + f', "x": {deep}}}' for i in range(3)] + [f'{{"x": {deep}}}']
    f.write_text("\n".join(rows) + "\n")  # x in every row: no null stops the fast path's comparison
    (res,) = ingest_paths(store, [str(f)], IngestOptions(reader="hh"))
    assert res.reconciles and res.rows_read == 4
    kept = depth < 254
    assert (res.accepted, res.quarantined) == ((3, 1) if kept else (0, 4))
    q = store.read("quarantine").sort_by("source_row")
    reasons, fields = q.column("reason").to_pylist(), q.column("field").to_pylist()
    if depth >= 1024:  # orjson cannot read the rows
        assert set(reasons) == {"malformed JSON: depth limit exceeded"}
    elif not kept:  # it reads them but cannot write x to meta: named field and reason
        assert fields[:3] == ["x"] * 3 and all("cannot be kept in meta as JSON" in r for r in reasons[:3])
        assert all("see row" in raw for raw in q.column("raw").to_pylist()[:3])
    if kept:
        con = catalog.connect(store)
        try:
            metas = [json.loads(m) for (m,) in con.sql("SELECT meta FROM pairs").fetchall()]
        finally:
            con.close()
        x = metas[0]["x"]
        for _ in range(depth - 1):
            x = x["a"]
        assert x == {"a": 1} and len(metas) == 3
