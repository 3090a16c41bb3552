"""The real spurious_groups scorer feeds the rm shards' group and weight columns (small real subset)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curation import catalog
from curation.builds.build import build
from curation.builds.policy import bundled_policy, load_policy, parse_policy
from tests.fixtures.inputs import subset_lines
from tests.fixtures.stores import ingest, score


@pytest.mark.slow
def test_group_ids_and_weights_from_the_real_scorer(store, shared_data, tmp_path):
    hh = subset_lines(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", tmp_path / "hh.jsonl", 100)
    ingest(store, [hh])
    from curation.scoring import run_scorer

    score(store, ["length_bias"])
    run_scorer(store, "spurious_groups", clusters=4, steps=100, progress=False)
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"]["balance_length"] = (
        False  # the group weight as it is (balance: test_length_diagnostics)
    )
    res = build(store, parse_policy(data))
    assert "spurious_groups" in res.manifest["scorers"]
    scored = {
        r["id"]: r
        for r in catalog.read(store, "scored_pairs").select(["id", "group_id", "group_weight"]).to_pylist()
    }
    rows = [
        r
        for s in res.manifest["shards"]
        if s["consumer"] == "rm"
        for r in pq.read_table(res.path / s["path"]).to_pylist()
    ]
    assert rows
    for r in rows:
        assert r["group"] == scored[r["id"]]["group_id"]
        assert r["weight"] == pytest.approx(scored[r["id"]]["group_weight"])
    assert len({r["group"] for r in rows}) >= 2
