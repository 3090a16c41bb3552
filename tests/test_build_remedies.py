"""Noise remedies and training columns on real pairs, with score columns from a fixture table.

The quality classes, adaptive margins and groups come from scorers that need a trained reward model;
here they are fixture columns with the contract's names (derived from the real record ids), so the
build's handling of each remedy is checked exactly: flip swaps chosen and rejected, soft label sets
alpha, drop records the remedy as the reason, and margin/group/weight/epsilon reach every shard row.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import curation.builds.build as b
from curation.builds.policy import PolicyError, bundled_policy, load_policy, parse_policy
from tests.fixtures.scoring import fixture_class


def _policy(**rm):
    """The default with these remedies, and the policy's weight as written (balance_length is tested in
    tests/test_length_diagnostics.py)."""
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"]["remedies"].update(rm)
    data["consumers"]["rm"]["balance_length"] = False
    return parse_policy(data)


def _rows(res, consumer):
    return {
        r["id"]: r
        for s in res.manifest["shards"]
        if s["consumer"] == consumer
        for r in pq.read_table(res.path / s["path"]).to_pylist()
    }


def test_flip_soft_label_margin_group_weight(scored_store, fixture_scores):
    store, _ = scored_store
    res = b.build(store, _policy(incorrect="flip", ambiguous="soft_label"))
    rows = _rows(res, "rm")
    originals = {r["id"]: r for r in store.read("pairs").to_pylist()}
    seen = set()
    for i, r in rows.items():
        k = fixture_class(i)
        seen.add(k)
        o = originals[i]
        assert r["flipped"] == (k == "incorrect")
        if k == "incorrect":
            assert (r["chosen"], r["rejected"]) == (o["rejected"], o["chosen"])
        else:
            assert (r["chosen"], r["rejected"]) == (o["chosen"], o["rejected"])
        assert r["soft_label"] == (0.1 if k == "ambiguous" else 0.0)
        assert r["margin"] == pytest.approx((ord(i[2]) % 10) / 10.0)
        assert r["group"] == ord(i[3]) % 4
        assert r["weight"] == pytest.approx(0.5 + (ord(i[3]) % 4) * 0.25)
    assert seen == {"incorrect", "ambiguous", "clean"}
    sft = _rows(res, "sft")
    assert sft and all(r["label_smoothing"] == pytest.approx((ord(i[0]) % 5) / 25.0) for i, r in sft.items())


def test_drop_remedies_are_recorded_and_margin_can_be_off(scored_store, fixture_scores):
    store, _ = scored_store
    res = b.build(store, _policy(incorrect="drop", ambiguous="drop", adaptive_margin=False))
    rows = _rows(res, "rm")
    assert rows and all(fixture_class(i) == "clean" for i in rows)
    assert all(r["margin"] == 0.0 and r["soft_label"] == 0.0 and not r["flipped"] for r in rows.values())
    drops = res.manifest["accounting"]["totals"]["rm"]["dropped_by"]
    acc = [r for r in pq.read_table(res.path / "accounting.parquet").to_pylist() if r["consumer"] == "rm"]
    for cls in ("incorrect", "ambiguous"):
        dropped = [r for r in acc if r["outcome"] == f"filtered:remedy.{cls}"]
        assert dropped and drops[f"filtered:remedy.{cls}"] == len(dropped)
        assert all(fixture_class(r["id"]) == cls for r in dropped)


def test_soft_label_on_incorrect_keeps_orientation(scored_store, fixture_scores):
    store, _ = scored_store
    res = b.build(store, _policy(incorrect="soft_label", ambiguous="keep", soft_label_alpha=0.2))
    rows = _rows(res, "rm")
    for i, r in rows.items():
        assert not r["flipped"]
        assert r["soft_label"] == (0.2 if fixture_class(i) == "incorrect" else 0.0)


def test_label_smoothing_out_of_range_is_refused(scored_store, fixture_scores):
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["sft"]["label_smoothing"] = "label_smoothing * 100"
    with pytest.raises(PolicyError, match=r"consumers\.sft\.label_smoothing .*must be >= 0\.0 and < 1\.0"):
        b.build(store, parse_policy(data))
