"""Prefect flows on real sample data: content-keyed caching, reruns that do no work, and partial reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.inputs import subset_json, subset_lines

pytestmark = pytest.mark.usefixtures("prefect_quiet_after_module")


@pytest.fixture
def landing(tmp_path, shared_data) -> Path:
    """Small real inputs of each kind: ShareGPT pairs, Alpaca SFT, OASST ranking trees."""
    folder = tmp_path / "landing"
    folder.mkdir()
    subset_json(shared_data / "llama-factory" / "dpo_en_demo.json", folder / "dpo.json", 0, 40)
    subset_json(shared_data / "llama-factory" / "alpaca_en_demo.json", folder / "alpaca.json", 0, 60)
    subset_lines(shared_data / "oasst" / "en_100_tree.jsonl", folder / "oasst.jsonl", 8)
    return folder


def _states(out: dict) -> dict[str, str]:
    return {s["task"]: s["state"] for s in out["steps"]}


@pytest.mark.slow  # three pipeline runs with build and report: ~20 s on a quiet 2-core box
def test_pipeline_caches_on_content_and_reruns_only_dependents(prefect_api, landing, tmp_path, shared_data):
    from curation.catalog import query
    from curation.core.store import Store
    from flows.pipeline import pipeline_flow

    store = tmp_path / "store"
    scorers = {"length_bias": {"progress": False}}
    kwargs = dict(store=str(store), inputs=[str(landing)], scorers=scorers, policy="default", name="t")

    first = pipeline_flow(**kwargs)
    states = _states(first)
    assert {"ingest dpo.json", "ingest alpaca.json", "ingest oasst.jsonl"} <= set(states)
    assert {"near-dedup pair", "near-dedup sft", "near-dedup ranking"} <= set(states)
    assert set(states.values()) == {"Completed"}, states
    counts = {r["source"]: r["accepted"] for r in first["ingest"]["files"]}
    pairs = query(Store(store), "SELECT count(*) AS n FROM pairs").column("n")[0].as_py()
    assert pairs == counts["dpo"] > 30

    # unchanged inputs, even when they sit in another folder: every task is a cache hit, nothing is written
    moved = tmp_path / "moved"
    shutil.copytree(landing, moved)
    before = sorted(p.relative_to(store) for p in store.rglob("*.parquet"))
    second = pipeline_flow(**(kwargs | {"inputs": [str(moved)]}))
    assert _states(second).keys() == states.keys()
    assert set(_states(second).values()) == {"Cached"}, _states(second)
    assert sorted(p.relative_to(store) for p in store.rglob("*.parquet")) == before
    assert second["ingest"]["files"] == first["ingest"]["files"]

    # one changed pair file: its ingest, the pair near-dedup and everything downstream run again
    subset_json(shared_data / "llama-factory" / "dpo_en_demo.json", moved / "dpo.json", 40, 70)
    third = _states(pipeline_flow(**(kwargs | {"inputs": [str(moved)]})))
    assert third["ingest dpo.json"] == "Completed"
    assert third["near-dedup pair"] == "Completed"
    for unchanged in ("ingest alpaca.json", "ingest oasst.jsonl", "near-dedup sft", "near-dedup ranking"):
        assert third[unchanged] == "Cached", (unchanged, third)
    for step, state in third.items():
        if step.startswith(("score ", "build ", "report ")):
            assert state == "Completed", (step, third)
    pairs_after = query(Store(store), "SELECT count(*) AS n FROM pairs").column("n")[0].as_py()
    assert pairs_after > pairs  # the new rows were ingested beside the old ones


def test_deleting_the_store_drops_its_cache(prefect_api, landing, tmp_path):
    """Results live inside the store: a fresh store at the same path is ingested again, not 'cached'."""
    from curation.catalog import query
    from curation.core.store import Store
    from flows.pipeline import ingest_flow

    store = tmp_path / "store"
    first = ingest_flow(str(store), [str(landing / "alpaca.json")])
    assert [s["state"] for s in first["steps"]] == ["Completed", "Completed"]
    shutil.rmtree(store)
    again = ingest_flow(str(store), [str(landing / "alpaca.json")])
    assert [s["state"] for s in again["steps"]] == ["Completed", "Completed"]
    assert (
        query(Store(store), "SELECT count(*) AS n FROM sft").column("n")[0].as_py()
        == first["files"][0]["accepted"]
    )


def test_bad_file_fails_the_flow_by_name_after_ingesting_the_rest(prefect_api, landing, tmp_path):
    from flows.pipeline import IngestFailed, ingest_flow

    (landing / "broken.json").write_text('{"no": "known layout"}')
    store = tmp_path / "store"
    with pytest.raises(IngestFailed, match="broken.json"):
        ingest_flow(str(store), [str(landing)])
    from curation.catalog import query
    from curation.core.store import Store

    kinds = (
        query(Store(store), "SELECT DISTINCT kind FROM ingest_runs ORDER BY kind").column("kind").to_pylist()
    )
    assert kinds == ["pair", "ranking", "sft"]


def test_transient_errors_are_retried_and_bad_data_is_not():
    import httpx

    from curation.core.errors import StoreLocked
    from flows.tasks import is_transient

    req = httpx.Request("POST", "http://judge.invalid/v1/chat/completions")
    assert is_transient(StoreLocked("store x is locked by PID 1"))
    assert is_transient(httpx.ConnectTimeout("timed out", request=req))
    assert is_transient(httpx.HTTPStatusError("busy", request=req, response=httpx.Response(429, request=req)))
    assert is_transient(httpx.HTTPStatusError("down", request=req, response=httpx.Response(503, request=req)))
    assert not is_transient(
        httpx.HTTPStatusError("bad", request=req, response=httpx.Response(400, request=req))
    )
    assert not is_transient(ValueError("row 3: field chosen: empty turn"))
