"""Every real file in ../shared/data through its reader: counts and field contents checked against
independent computations on the raw files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from curation import catalog
from curation.core.store import Store
from curation.ingest.pipeline import IngestOptions, UnitResult, ingest_paths
from schemas import SCHEMAS

AUTO_FILES = [
    "hh-rlhf/harmless-base-test.jsonl.gz",
    "llama-factory/alpaca_en_demo.json",
    "llama-factory/dpo_en_demo.json",
    "llama-factory/glaive_toolcall_en_demo.json",
    "llama-factory/kto_en_demo.json",
    "llama-factory/v1_sft_demo.jsonl",
    "alpaca-eval",
    "oasst/en_100_tree.jsonl",
    "openai-cookbook/toy_chat_fine_tuning.jsonl",
    "gsm8k/example_model_solutions.jsonl",
]


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".gz":
        return [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory) -> tuple[Store, dict[str, UnitResult]]:
    store = Store(tmp_path_factory.mktemp("real") / "store")
    results = ingest_paths(store, [str(shared_data / f) for f in AUTO_FILES])
    results += ingest_paths(
        store,
        [str(shared_data / "self-instruct/seed_tasks.jsonl")],
        IngestOptions(
            kind="sft",
            mapping={
                "prompt": "instruction",
                "input": "instances[0].input",
                "response": "instances[0].output",
            },
        ),
    )
    results += ingest_paths(
        store,
        [str(shared_data / "gsm8k/test.jsonl")],
        IngestOptions(kind="sft", mapping={"prompt": "question", "response": "answer"}),
    )
    return store, {r.source: r for r in results}


def _q(store: Store, sql: str) -> list[tuple]:
    con = catalog.connect(store)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def test_every_file_reconciles(real):
    store, res = real
    assert len(res) == 14
    for r in res.values():
        assert r.error is None and not r.skipped
        assert r.reconciles, r
    # the ingest_runs view holds the same accounting
    runs = dict(_q(store, "SELECT source, rows_read FROM ingest_runs"))
    assert runs == {s: r.rows_read for s, r in res.items()}


def test_hh_transcripts(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "hh-rlhf/harmless-base-test.jsonl.gz")
    r = res["harmless-base-test"]
    assert r.reader == "hh" and r.kind == "pair" and r.rows_read == len(raw) == 2312

    def last_empty(t: str) -> bool:
        return not t.rsplit("\n\nAssistant:", 1)[1].strip()

    empty = sum(last_empty(x["chosen"]) or last_empty(x["rejected"]) for x in raw)
    assert empty == 4
    assert r.quarantined == empty and r.accepted == len(raw) - empty
    reasons = _q(store, "SELECT DISTINCT reason FROM quarantine WHERE source = 'harmless-base-test'")
    assert reasons == [("empty turn",)]
    # row 0: shared prefix -> prompt, differing last assistant turn -> responses
    (prompt, chosen, rejected, strength) = _q(
        store,
        "SELECT prompt, chosen, rejected, strength FROM pairs WHERE source='harmless-base-test' AND source_row=0",
    )[0]
    head, last_c = raw[0]["chosen"].rsplit("\n\nAssistant: ", 1)
    assert raw[0]["rejected"].startswith(head)
    assert chosen == [{"role": "assistant", "content": last_c}]
    assert rejected == [{"role": "assistant", "content": raw[0]["rejected"].rsplit("\n\nAssistant: ", 1)[1]}]
    assert prompt[0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert len(prompt) == head.count("\n\nHuman: ") + head.count("\n\nAssistant: ")
    assert [m["role"] for m in prompt[:3]] == ["user", "assistant", "user"]
    assert prompt[1]["content"] == "Are you looking for practical joke ideas?"
    assert prompt[2]["content"] == "yep" and prompt[-1]["role"] == "user"
    assert strength is None


def test_unit_parquet_layout(real):
    """Texts are written plain, without min/max statistics; the short columns keep both (write_options)."""
    store, _ = real
    (unit,) = store.path("ingest").glob("harmless-base-test-*")
    for name in ("pair", "quarantine"):
        meta = pq.read_metadata(unit / f"{name}.parquet")
        for g in range(meta.num_row_groups):
            cols = {c.path_in_schema: c for c in map(meta.row_group(g).column, range(meta.num_columns))}
            for path, col in cols.items():
                text = path.endswith((".content", "raw"))
                assert col.is_stats_set is not text, path
                dictionary = "RLE_DICTIONARY" in col.encodings
                assert dictionary is (not text and path not in ("id", "source_row")), path
    assert pq.read_table(unit / "pair.parquet").schema == SCHEMAS["pair"]


def test_alpaca_and_exact_duplicates(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "llama-factory/alpaca_en_demo.json")
    distinct = {(x["instruction"], x["input"], x["output"]) for x in raw}
    r = res["alpaca_en_demo"]
    assert (r.rows_read, r.accepted, r.duplicates) == (999, len(distinct), 999 - len(distinct))
    assert len(distinct) == 985
    msgs = _q(store, "SELECT messages FROM sft WHERE source='alpaca_en_demo' AND source_row=0")[0][0]
    x = raw[0]
    user = x["instruction"] + (f"\n\n{x['input']}" if x["input"] else "")
    assert msgs == [{"role": "user", "content": user}, {"role": "assistant", "content": x["output"]}]
    # duplicates point at an id that is in the store
    orphan = _q(
        store,
        "SELECT count(*) FROM duplicates d WHERE d.source='alpaca_en_demo' AND d.id NOT IN (SELECT id FROM sft)",
    )
    assert orphan == [(0,)]


def test_sharegpt_pairs(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "llama-factory/dpo_en_demo.json")
    r = res["dpo_en_demo"]
    distinct = {json.dumps([x["conversations"], x["chosen"], x["rejected"]]) for x in raw}
    assert r.reader == "sharegpt_pair" and r.accepted == len(distinct) == 295 and r.duplicates == 5
    multi = _q(store, "SELECT count(*) FROM pairs WHERE source='dpo_en_demo' AND len(prompt) > 1")[0][0]
    first: dict[str, dict] = {}
    for x in raw:
        first.setdefault(json.dumps([x["conversations"], x["chosen"], x["rejected"]]), x)
    assert multi == sum(len(x["conversations"]) > 1 for x in first.values()) > 0
    row0 = _q(
        store, "SELECT prompt, chosen, rejected FROM pairs WHERE source='dpo_en_demo' AND source_row=0"
    )[0]
    assert row0[0] == [{"role": "user", "content": raw[0]["conversations"][0]["value"]}]
    assert row0[1] == [{"role": "assistant", "content": raw[0]["chosen"]["value"]}]
    assert row0[2] == [{"role": "assistant", "content": raw[0]["rejected"]["value"]}]


def test_sharegpt_tool_roles(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "llama-factory/glaive_toolcall_en_demo.json")
    r = res["glaive_toolcall_en_demo"]
    assert r.reader == "sharegpt" and r.quarantined == 0
    assert r.accepted + r.duplicates == 300
    roles = dict(
        _q(
            store,
            "SELECT m.role, count(*) FROM (SELECT unnest(messages) AS m FROM sft "
            "WHERE source='glaive_toolcall_en_demo') GROUP BY 1",
        )
    )
    assert set(roles) == {"user", "assistant", "tool"}
    n_obs = sum(t["from"] == "observation" for x in raw for t in x["conversations"])
    assert 0 < roles["tool"] <= n_obs
    # tools definitions are kept in meta
    meta = json.loads(_q(store, "SELECT meta FROM sft WHERE source='glaive_toolcall_en_demo' LIMIT 1")[0][0])
    assert "tools" in meta


def test_messages_and_kto_label_in_meta(real, shared_data):
    store, res = real
    assert res["kto_en_demo"].accepted == 300
    labels = _q(
        store,
        "SELECT json_extract(meta, '$.label')::BOOLEAN AS l, count(*) FROM sft "
        "WHERE source='kto_en_demo' GROUP BY l ORDER BY l",
    )
    raw = _rows(shared_data / "llama-factory/kto_en_demo.json")
    assert labels == [(False, sum(not x["label"] for x in raw)), (True, sum(x["label"] for x in raw))]
    v1 = res["v1_sft_demo"]
    raw = _rows(shared_data / "llama-factory/v1_sft_demo.jsonl")
    assert v1.rows_read == 500 and v1.accepted + v1.duplicates == 500 and v1.quarantined == 0
    # per-turn fields (loss_weight) are kept in meta, turn by turn
    row0 = json.loads(_q(store, "SELECT meta FROM sft WHERE source='v1_sft_demo' AND source_row=0")[0][0])
    assert [t["loss_weight"] for t in row0["turn_fields"]] == [m["loss_weight"] for m in raw[0]["messages"]]


def test_alpaca_eval_soft_preference(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "alpaca-eval/gpt-3.5-turbo-1106.annotations.json")
    r = res["gpt-3.5-turbo-1106.annotations"]
    ties = [i for i, x in enumerate(raw) if x["preference"] == 1.5]
    assert r.quarantined == len(ties) == 4 and r.records_out == 805 - len(ties)
    q = _q(store, "SELECT source_row, reason FROM quarantine WHERE source='gpt-3.5-turbo-1106.annotations'")
    assert sorted(row for row, _ in q) == ties and all("tie" in reason for _, reason in q)
    got = {
        row: (chosen[0]["content"], strength)
        for row, chosen, strength in _q(
            store,
            "SELECT source_row, chosen, strength FROM pairs WHERE source='gpt-3.5-turbo-1106.annotations'",
        )
    }
    for i, x in enumerate(raw):
        if i in ties or i not in got:
            continue
        p2 = x["preference"] - 1
        winner = x["output_2"] if p2 > 0.5 else x["output_1"]
        assert got[i] == (winner, pytest.approx(max(p2, 1 - p2)))


def test_oasst_rankings_keep_ties_and_order(real):
    store, res = real
    r = res["en_100_tree"]
    assert r.rows_read == 100 and r.records_out == 212 and r.accepted == 212
    sizes = [n for (n,) in _q(store, "SELECT len(candidates) FROM rankings WHERE source='en_100_tree'")]
    assert min(sizes) >= 2 and max(sizes) <= 9
    # grade order follows the human rank (rank 0 = best = highest grade)
    for (cands,) in _q(store, "SELECT candidates FROM rankings WHERE source='en_100_tree'"):
        ranks = [json.loads(c["meta"])["rank"] for c in cands]
        for a, ca in zip(ranks, cands, strict=True):
            for b, cb in zip(ranks, cands, strict=True):
                assert (a < b) == (ca["grade"] > cb["grade"])


def test_gsm8k_solutions_partial_order(real, shared_data):
    store, res = real
    raw = _rows(shared_data / "gsm8k/example_model_solutions.jsonl")
    assert res["example_model_solutions"].accepted == len(raw) == 1319
    rows = _q(
        store,
        "SELECT source_row, candidates FROM rankings WHERE source='example_model_solutions' ORDER BY source_row",
    )
    for i, cands in rows[:200]:
        x = raw[i]
        assert cands[0] == {
            "content": x["ground_truth"],
            "grade": 3,
            "is_reference": True,
            "meta": '{"model": "reference"}',
        }
        models = [k for k, v in x.items() if isinstance(v, dict)]
        assert [c["grade"] for c in cands[1:]] == [2 if x[m]["is_correct"] else 1 for m in models]


def test_cookbook_bad_format_quarantined(real, shared_data):
    store, res = real
    r = res["toy_chat_fine_tuning"]
    assert (r.rows_read, r.accepted, r.quarantined) == (5, 3, 2)
    q = _q(
        store,
        "SELECT source_row, field, reason, source_file, raw FROM quarantine "
        "WHERE source='toy_chat_fine_tuning' ORDER BY source_row",
    )
    lines = (shared_data / "openai-cookbook/toy_chat_fine_tuning.jsonl").read_text().splitlines()
    assert [row for row, *_ in q] == [3, 4]
    assert "first turn after the system prompt is not a user turn" in q[0][2]
    assert "length out of bounds" in q[1][2] and "26077" in q[1][2]
    for row, _, _, source_file, raw in q:
        assert source_file.endswith("toy_chat_fine_tuning.jsonl")
        assert orjson.loads(raw) == orjson.loads(lines[row])


def test_nested_and_flat_mappings(real, shared_data):
    store, res = real
    seed = _rows(shared_data / "self-instruct/seed_tasks.jsonl")
    assert res["seed_tasks"].accepted == len(seed) == 175
    got = dict(_q(store, "SELECT source_row, messages FROM sft WHERE source='seed_tasks'"))
    for i, x in enumerate(seed):
        inst = x["instances"][0]
        user = x["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
        assert got[i] == [{"role": "user", "content": user}, {"role": "assistant", "content": inst["output"]}]
    gsm = _rows(shared_data / "gsm8k/test.jsonl")
    assert res["test"].accepted == len(gsm) == 1319
    got = dict(_q(store, "SELECT source_row, messages FROM sft WHERE source='test' AND source_row < 50"))
    for i in range(50):
        assert got[i][1]["content"] == gsm[i]["answer"]


def test_reingest_adds_nothing(real, shared_data):
    store, res = real
    before = _q(
        store,
        "SELECT (SELECT count(*) FROM sft), (SELECT count(*) FROM pairs), (SELECT count(*) FROM rankings)",
    )
    again = ingest_paths(store, [str(shared_data / f) for f in AUTO_FILES[:3]])
    assert all(r.skipped for r in again)
    assert [r.accepted for r in again] == [res[r.source].accepted for r in again]
    assert (
        _q(
            store,
            "SELECT (SELECT count(*) FROM sft), (SELECT count(*) FROM pairs), (SELECT count(*) FROM rankings)",
        )
        == before
    )


def test_explicit_reader_override(shared_data, store):
    (r,) = ingest_paths(
        store, [str(shared_data / "llama-factory/dpo_en_demo.json")], IngestOptions(reader="sharegpt")
    )
    assert r.reader == "sharegpt" and r.kind == "sft" and r.quarantined == 300 and r.accepted == 0
    reasons = _q(store, "SELECT DISTINCT reason FROM quarantine")
    assert reasons == [("conversation does not end with an assistant turn",)]


def test_label_mapping_csv_and_parquet(shared_data, store, tmp_path):
    """Pairs given as two responses + a label column, read from CSV (embedded newlines) and Parquet."""
    raw = _rows(shared_data / "alpaca-eval/gpt-3.5-turbo-1106_verbose.annotations.json")[:120]
    label = ["A" if x["preference"] < 1.5 else "B" if x["preference"] > 1.5 else "same" for x in raw]
    table = pa.table(
        {
            "question": [x["instruction"] for x in raw],
            "ans_a": [x["output_1"] for x in raw],
            "ans_b": [x["output_2"] for x in raw],
            "better": label,
        }
    )
    pacsv.write_csv(table, tmp_path / "judged.csv")
    pq.write_table(table.slice(0, 60), tmp_path / "judged.parquet")
    opts = IngestOptions(
        kind="pair",
        mapping={"prompt": "question", "response_a": "ans_a", "response_b": "ans_b", "label": "better"},
        label_values={"A": "a", "B": "b", "same": "tie"},
    )
    res = {
        r.source_file.rsplit(".", 1)[1]: r for r in ingest_paths(store, [str(tmp_path / "judged.*")], opts)
    }
    ties = sum(v == "same" for v in label)
    assert res["csv"].rows_read == 120 and res["csv"].quarantined == ties
    assert res["csv"].accepted == 120 - ties
    assert res["parquet"].duplicates == 60 - sum(v == "same" for v in label[:60])
    chosen = dict(_q(store, "SELECT source_row, chosen[1].content FROM pairs"))
    for i, x in enumerate(raw):
        if label[i] != "same":
            assert chosen[i] == (x["output_1"] if label[i] == "A" else x["output_2"])
