"""Noise remedies and training columns on real pairs, with score columns from a fixture table.

The quality classes, adaptive margins and groups come from scorers that need a trained reward model;
here they are fixture columns with the contract's names (derived from the real record ids), so the
build's handling of each remedy is checked exactly: flip swaps chosen and rejected, soft label sets
alpha, drop records the remedy as the reason, and margin/group/weight/epsilon reach every shard row.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_build_helpers)
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

import curation.builds.build as b
from curation.builds.policy import PolicyError, bundled_policy, load_policy, parse_policy
from tests.test_build_helpers import real_store, real_store_template  # noqa: F401  (fixtures)

FIXTURE_RM = """
    quality_class: CASE WHEN id[1] IN ('0','1','2','3','4') THEN 'incorrect'
                        WHEN id[1] IN ('5','6','7','8','9') THEN 'ambiguous' ELSE 'clean' END,
    adaptive_margin: (ascii(id[3]) % 10) / 10.0,
    group_id: (ascii(id[4]) % 4)::INTEGER,
    group_weight: 0.5 + (ascii(id[4]) % 4) * 0.25
"""


@pytest.fixture
def fixture_scores(monkeypatch):
    """Wrap open_connection: the consumers' relations get fixture score columns."""
    real_open = b.open_connection

    def open_with_fixture(store):
        con = real_open(store)
        repl = ", ".join(
            f"{expr.strip()} AS {col.strip()}"
            for col, expr in (part.split(":", 1) for part in FIXTURE_RM.strip().split(",\n"))
        )
        con.execute("CREATE TEMP TABLE fx_rm AS SELECT * FROM curate_rm")
        con.execute(f"CREATE OR REPLACE TEMP VIEW curate_rm AS SELECT * REPLACE ({repl}) FROM fx_rm")
        con.execute("CREATE TEMP TABLE fx_sft AS SELECT * FROM curate_sft")
        con.execute(
            "CREATE OR REPLACE TEMP VIEW curate_sft AS "
            "SELECT * REPLACE ((ascii(id[1]) % 5) / 25.0 AS label_smoothing) FROM fx_sft"
        )
        return con

    monkeypatch.setattr(b, "open_connection", open_with_fixture)


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


def _klass(i: str) -> str:
    return "incorrect" if i[0] in "01234" else "ambiguous" if i[0] in "56789" else "clean"


def test_flip_soft_label_margin_group_weight(real_store, fixture_scores):
    store, _ = real_store
    res = b.build(store, _policy(incorrect="flip", ambiguous="soft_label"))
    rows = _rows(res, "rm")
    originals = {r["id"]: r for r in store.read("pairs").to_pylist()}
    seen = set()
    for i, r in rows.items():
        k = _klass(i)
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


def test_drop_remedies_are_recorded_and_margin_can_be_off(real_store, fixture_scores):
    store, _ = real_store
    res = b.build(store, _policy(incorrect="drop", ambiguous="drop", adaptive_margin=False))
    rows = _rows(res, "rm")
    assert rows and all(_klass(i) == "clean" for i in rows)
    assert all(r["margin"] == 0.0 and r["soft_label"] == 0.0 and not r["flipped"] for r in rows.values())
    drops = res.manifest["accounting"]["totals"]["rm"]["dropped_by"]
    acc = [r for r in pq.read_table(res.path / "accounting.parquet").to_pylist() if r["consumer"] == "rm"]
    for cls in ("incorrect", "ambiguous"):
        dropped = [r for r in acc if r["outcome"] == f"filtered:remedy.{cls}"]
        assert dropped and drops[f"filtered:remedy.{cls}"] == len(dropped)
        assert all(_klass(r["id"]) == cls for r in dropped)


def test_soft_label_on_incorrect_keeps_orientation(real_store, fixture_scores):
    store, _ = real_store
    res = b.build(store, _policy(incorrect="soft_label", ambiguous="keep", soft_label_alpha=0.2))
    rows = _rows(res, "rm")
    for i, r in rows.items():
        assert not r["flipped"]
        assert r["soft_label"] == (0.2 if _klass(i) == "incorrect" else 0.0)


def test_label_smoothing_out_of_range_is_refused(real_store, fixture_scores):
    store, _ = real_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["sft"]["label_smoothing"] = "label_smoothing * 100"
    with pytest.raises(PolicyError, match=r"consumers\.sft\.label_smoothing .*must be >= 0\.0 and < 1\.0"):
        b.build(store, parse_policy(data))
