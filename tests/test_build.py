"""End to end on real data: ingest -> score (real scorers) -> build; accounting, determinism, TRL loading."""

from __future__ import annotations

import hashlib
import json

import duckdb
import pyarrow.parquet as pq
import pytest

from curation import catalog
from curation.builds.build import build
from curation.builds.policy import bundled_policy, load_policy, parse_policy
from schemas.ids import prompt_text
from schemas.shards import SHARD_SCHEMAS


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_accounting_reconciles_to_the_record(scored_store):
    store, scorers = scored_store
    res = build(store, load_policy(bundled_policy()))
    m = res.manifest
    acc = pq.read_table(res.path / "accounting.parquet").to_pylist()
    con = catalog.connect(store)
    kinds = {"sft": "sft", "rm": "pair", "ranking": "ranking"}
    for consumer, kind in kinds.items():
        rows = [r for r in acc if r["consumer"] == consumer]
        # every input row of the kind: accepted records + quarantined rows + exact duplicates
        (expected,) = con.execute(
            "SELECT sum(accepted + quarantined + duplicates) FROM ingest_runs WHERE kind = ?", [kind]
        ).fetchone()
        assert len(rows) == expected == m["accounting"]["totals"][consumer]["records"]
        # one outcome per input row, each row of each file exactly once
        keys = {(r["source_file"], r["source_row"]) for r in rows}
        assert len(keys) == len(rows)
        # kept records are exactly the shard rows, split by split and source
        for split in ("train", "eval"):
            shard_rows = [
                row
                for s in m["shards"]
                if s["consumer"] == consumer and s["split"] == split
                for row in pq.read_table(res.path / s["path"]).to_pylist()
            ]
            kept = [r for r in acc if r["consumer"] == consumer and r["outcome"] == f"kept:{split}"]
            assert sorted(r["id"] for r in shard_rows) == sorted(r["id"] for r in kept)
            assert sum(m["counts"][consumer][split].values()) == len(shard_rows)
    # the toy chat file's format errors are quarantined, with the reason
    q = [r for r in acc if r["status"] == "quarantined" and "toy_chat" in r["source_file"]]
    assert q and all(r["outcome"].startswith("quarantined:") and len(r["outcome"]) > 12 for r in q)
    # Alpaca's repeated records are accounted for as duplicates of a kept or dropped record
    dups = [r for r in acc if r["status"] == "duplicate" and r["consumer"] == "sft"]
    assert dups and all(r["outcome"] == f"duplicate_of:{r['id']}" for r in dups)
    # the default policy's length filter dropped exactly the pairs the real length_bias scorer flags
    (flagged,) = con.execute(
        "SELECT count(*) FROM scored_pairs s WHERE length_explained "
        "AND s.id NOT IN (SELECT id FROM near_duplicates WHERE NOT record_representative)"
    ).fetchone()
    dropped = m["accounting"]["totals"]["rm"]["dropped_by"].get("filtered:not_length_explained", 0)
    assert flagged > 0 and dropped == flagged
    # manifest: shard hashes, scorer versions, inputs
    for s in m["shards"]:
        assert _sha(res.path / s["path"]) == s["sha256"]
        assert pq.read_metadata(res.path / s["path"]).num_rows == s["rows"]
    assert set(scorers) <= set(m["scorers"])
    assert {i["file_sha256"] for i in m["inputs"]} and all(len(i["file_sha256"]) == 64 for i in m["inputs"])
    # the same accounting through SQL: the curated_accounting view over every build
    view = dict(
        con.execute(
            "SELECT consumer, count(*) FROM curated_accounting WHERE build = 'default' GROUP BY consumer"
        ).fetchall()
    )
    assert view == {c: t["records"] for c, t in m["accounting"]["totals"].items()}


def test_shards_have_every_column_and_no_prompt_crosses_splits(scored_store):
    store, _ = scored_store
    res = build(store, load_policy(bundled_policy()))
    for consumer, schema in SHARD_SCHEMAS.items():
        prompts = {}
        for s in (s for s in res.manifest["shards"] if s["consumer"] == consumer):
            t = pq.read_table(res.path / s["path"])
            assert t.schema.equals(schema, check_metadata=False)
            assert all(t.column(c).null_count == 0 for c in t.column_names), f"{s['path']} has missing values"
            for row in t.to_pylist():
                p = row["messages"][:-1] if consumer == "sft" else row["prompt"]
                prompts.setdefault(s["split"], set()).add(prompt_text(p))
            ids = t.column("id").to_pylist()
            assert ids == sorted(ids)
        assert prompts["train"] and prompts["eval"]
        assert not prompts["train"] & prompts["eval"], f"{consumer}: a prompt is in both splits"


def test_rebuild_is_byte_identical_and_manifest_hashes_lineage(scored_store):
    store, _ = scored_store
    pol = load_policy(bundled_policy())
    first = build(store, pol)
    shas1 = {s["path"]: s["sha256"] for s in first.manifest["shards"]}
    acc1 = first.manifest["accounting"]["sha256"]
    second = build(store, pol)
    assert {s["path"]: s["sha256"] for s in second.manifest["shards"]} == shas1
    assert second.manifest["accounting"]["sha256"] == acc1
    assert {s["path"]: _sha(second.path / s["path"]) for s in second.manifest["shards"]} == shas1
    assert second.manifest["lineage_sha256"] == first.manifest["lineage_sha256"]
    # a different split salt is a different policy and a different split
    data = json.loads(pol.canonical_json())
    data["split"]["salt"] = "another-salt"
    other = build(store, parse_policy(data), name="other")
    assert other.manifest["policy_sha256"] != first.manifest["policy_sha256"]
    assert other.manifest["lineage_sha256"] != first.manifest["lineage_sha256"]
    assert {s["path"]: s["sha256"] for s in other.manifest["shards"]} != shas1


def test_trl_and_datasets_read_the_shards(scored_store, minilm, tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from trl import data_utils

    store, _ = scored_store
    res = build(store, load_policy(bundled_policy()))
    tok = AutoTokenizer.from_pretrained(str(minilm))
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    rm = datasets.load_dataset(
        "parquet", data_files={"train": str(res.path / "rm" / "train-*.parquet")}, cache_dir=str(tmp_path)
    )["train"]
    assert rm.num_rows == sum(res.manifest["counts"]["rm"]["train"].values())
    assert {"prompt", "chosen", "rejected", "weight", "margin"} <= set(rm.column_names)
    ex = rm[0]
    assert data_utils.is_conversational(ex)
    out = data_utils.maybe_apply_chat_template({k: ex[k] for k in ("prompt", "chosen", "rejected")}, tok)
    assert out["prompt"].startswith("<user>") and out["chosen"].startswith("<assistant>")
    # every row carries a margin (TRL's collator reads it from the first example of a batch)
    assert all(isinstance(m, float) for m in rm["margin"])
    sft = datasets.load_dataset(
        "parquet", data_files={"train": str(res.path / "sft" / "train-*.parquet")}, cache_dir=str(tmp_path)
    )["train"]
    assert data_utils.is_conversational(sft[0]) and "label_smoothing" in sft.column_names
    text = data_utils.maybe_apply_chat_template({"messages": sft[0]["messages"]}, tok)["text"]
    assert "<assistant>" in text


def test_interrupted_build_leaves_no_complete_looking_shards_and_rerun_finishes(scored_store, monkeypatch):
    import curation.builds.build as b

    store, _ = scored_store
    pol = load_policy(bundled_policy())
    calls = {"n": 0}
    real_write = b.write_shard

    def dying_write(table, path):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed mid-build")
        return real_write(table, path)

    monkeypatch.setattr(b, "write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        build(store, pol)
    assert not (store.root / "curated" / "default").exists()
    assert not store.files("curated/**/*.parquet")
    # a first complete build, then an interrupted rebuild: the old build stays whole
    monkeypatch.setattr(b, "write_shard", real_write)
    done = build(store, pol)
    old = {s["path"]: s["sha256"] for s in done.manifest["shards"]}
    calls["n"] = 0
    monkeypatch.setattr(b, "write_shard", dying_write)
    data = json.loads(pol.canonical_json())
    data["shard_rows"] = 100
    with pytest.raises(KeyboardInterrupt):
        build(store, parse_policy(data))
    manifest = json.loads((store.root / "curated" / "default" / "manifest.json").read_text())
    assert {s["path"]: s["sha256"] for s in manifest["shards"]} == old
    assert {s["path"]: _sha(done.path / s["path"]) for s in manifest["shards"]} == old
    # the rerun finishes, and leaves nothing in staging
    monkeypatch.setattr(b, "write_shard", real_write)
    again = build(store, parse_policy(data))
    assert len(again.manifest["shards"]) > len(old)
    assert not list((store.root / ".staging").iterdir())


def test_build_takes_the_writer_lock(scored_store):
    from curation.core.errors import StoreLocked

    store, _ = scored_store
    with store.writer_lock("other writer"), pytest.raises(StoreLocked, match="locked by PID"):
        build(store, load_policy(bundled_policy()))


def test_mix_ratios_and_caps_on_real_sources(scored_store):
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"] = {"rm": data["consumers"]["rm"]}
    data["consumers"]["rm"]["mix"] = {
        "ratios": {"hh-harmless": 1.0, "dpo_en_demo": 1.0},
        "caps": {"dpo_en_demo": 50},
    }
    res = build(store, parse_policy(data))
    counts = {}
    for split in res.manifest["counts"]["rm"].values():
        for src, n in split.items():
            counts[src] = counts.get(src, 0) + n
    assert counts["dpo_en_demo"] == 50
    # equal ratios: HH is cut to the smaller available source's size (before the cap)
    acc = duckdb.sql(
        f"SELECT source, status, count(*) FROM read_parquet('{res.path / 'accounting.parquet'}') "
        "WHERE status IN ('kept', 'capped') GROUP BY ALL"
    ).fetchall()
    by = {(s, st): n for s, st, n in acc}
    available_dpo = by[("dpo_en_demo", "kept")] + by[("dpo_en_demo", "capped")]
    assert counts["hh-harmless"] == available_dpo
    assert (
        res.manifest["accounting"]["totals"]["rm"]["dropped_by"]["capped:dpo_en_demo"] == available_dpo - 50
    )
