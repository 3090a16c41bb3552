"""Chosen-longer share (characters, ties left out) per source, raw and in the rm shards, in the manifest,
`curate stats`, `curate build` and `curate explain`; and the balance_length remedy, on real pairs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from curation.builds.build import build
from curation.builds.policy import bundled_policy, load_policy, parse_policy
from curation.cli import app
from tests.fixtures.scoring import fixture_class


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant")


def _share(rows, weighted: bool = False) -> float:
    """The oracle, in plain Python over shard or view rows: Σ w [chosen longer] / Σ w [not a tie]."""
    longer = untied = 0.0
    for r in rows:
        d = len(_text(r["chosen"])) - len(_text(r["rejected"]))
        w = r["weight"] if weighted else 1.0
        untied += w if d else 0.0
        longer += w if d > 0 else 0.0
    return longer / untied


def _policy(balance: bool | None = None):
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    if balance is not None:
        data["consumers"]["rm"]["balance_length"] = balance
    return parse_policy(data)


def _shard_rows(res, consumer: str = "rm") -> list[dict]:
    """Every row of the consumer's shards, with the split of its shard."""
    return [
        {**r, "split": s["split"]}
        for s in res.manifest["shards"]
        if s["consumer"] == consumer
        for r in pq.read_table(res.path / s["path"]).to_pylist()
    ]


def _by(rows, *keys) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def test_manifest_shares_match_the_raw_pairs_and_the_shards(scored_store, fixture_scores):
    """Raw shares from the pairs view and curated ones from the shard files as written (flips included),
    weighted and unweighted, overall, per split and per quality class, all recomputed here in Python."""
    store, _ = scored_store
    res = build(store, _policy(balance=False))
    diag = res.manifest["length_diagnostics"]
    assert "characters" in diag["definition"] and "ties" in diag["definition"]
    pairs = store.read("pairs").to_pylist()
    shard = _shard_rows(res)
    assert any(r["flipped"] for r in shard)  # the fixture classes flip some pairs
    assert set(diag["by_source"]) == {"hh-harmless", "dpo_en_demo"}
    for (src,), raw in _by(pairs, "source").items():
        d = diag["by_source"][src]
        assert d["raw"]["share"] == pytest.approx(_share(raw), abs=1e-6)
        assert d["raw"]["pairs"] == len(raw)
        assert d["raw"]["ties"] == sum(len(_text(r["chosen"])) == len(_text(r["rejected"])) for r in raw)
        kept = [r for r in shard if r["source"] == src]
        assert d["curated"]["pairs"] == len(kept)
        assert d["curated"]["share"] == pytest.approx(_share(kept), abs=1e-6)
        assert d["curated"]["weighted_share"] == pytest.approx(_share(kept, weighted=True), abs=1e-6)
        for (split,), part in _by(kept, "split").items():
            assert d["curated_by_split"][split]["share"] == pytest.approx(_share(part), abs=1e-6)
        for cls in ("incorrect", "ambiguous", "clean"):
            sub = [r for r in raw if fixture_class(r["id"]) == cls]
            assert d["raw_by_class"][cls]["share"] == pytest.approx(_share(sub), abs=1e-6)
        moved = 100 * (abs(d["curated"]["weighted_share"] - 0.5) - abs(d["raw"]["share"] - 0.5))
        assert d["further_from_half_points"] == pytest.approx(moved, abs=0.01)


def test_balance_length_makes_the_weighted_share_half_per_source(scored_store, fixture_scores):
    """balance_length on real pairs with the fixture's group weights and flips: in every source and split
    the weighted chosen-longer share of the shards is 0.5 and the mean weight 1, and each weight is the
    group weight times one factor per (source, split, longer or shorter)."""
    store, _ = scored_store
    plain = _shard_rows(build(store, _policy(balance=False), name="plain"))
    res = build(store, _policy(balance=True), name="balanced")
    rows = _shard_rows(res)
    group_weight = {r["id"]: r["weight"] for r in plain}  # the policy's weight: 0.5 + 0.25 * group
    assert {r["id"] for r in rows} == set(group_weight)
    for (src, split), part in _by(rows, "source", "split").items():
        before = [r for r in plain if (r["source"], r["split"]) == (src, split)]
        assert abs(_share(before, weighted=True) - 0.5) > 0.01  # there was something to balance
        assert _share(part, weighted=True) == pytest.approx(0.5, abs=1e-9)
        assert sum(r["weight"] for r in part) / len(part) == pytest.approx(1.0, abs=1e-9)
        for sign in (-1, 0, 1):
            side = [
                r
                for r in part
                if (len(_text(r["chosen"])) > len(_text(r["rejected"])))
                - (len(_text(r["chosen"])) < len(_text(r["rejected"])))
                == sign
            ]
            ratios = {round(r["weight"] / group_weight[r["id"]], 9) for r in side}
            assert len(ratios) <= 1, (src, split, sign)
    by_source = res.manifest["length_diagnostics"]["by_source"]
    assert all(d["curated"]["weighted_share"] == pytest.approx(0.5, abs=1e-6) for d in by_source.values())
    assert res.manifest["length_diagnostics"]["warnings"] == []


def test_default_policy_keeps_every_source_within_two_points_of_raw(scored_store):
    """The bundled default (balance on) on the real subsets scored with the real length_bias scorer: no
    source's weighted chosen-longer share is further from 0.5 than raw by more than 2 points, although
    its length filter alone moves the unweighted share (it drops chosen-longer pairs only)."""
    store, _ = scored_store
    res = build(store, "default")
    diag = res.manifest["length_diagnostics"]
    assert diag["warnings"] == []
    for src, d in diag["by_source"].items():
        assert d["further_from_half_points"] <= 2.0, src
    hh = diag["by_source"]["hh-harmless"]
    assert hh["curated"]["share"] < hh["raw"]["share"] - 0.02  # the filter's pull, undone by the weights


def test_cli_build_warns_naming_the_source_and_stats_and_explain_show_the_shares(scored_store, tmp_path):
    """Without balance_length the default's length filter moves HH's share more than 3 points: `curate
    build` warns naming the source (and the manifest records it); `curate stats` shows raw, per-class and
    per-build shares; `curate explain` shows a pair's lengths and its source's shares."""
    store, _ = scored_store
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"]["balance_length"] = False
    data["name"] = "unbalanced"
    policy = tmp_path / "unbalanced.yaml"
    policy.write_text(yaml.safe_dump(data))
    runner = CliRunner()
    out = runner.invoke(app, ["build", str(policy), "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    manifest = json.loads((store.root / "curated" / "unbalanced" / "manifest.json").read_text())
    diag = manifest["length_diagnostics"]
    moved = {src: d["further_from_half_points"] for src, d in diag["by_source"].items()}
    hh = diag["by_source"]["hh-harmless"]
    assert moved["hh-harmless"] > 3.0
    text = " ".join(out.output.split())
    for src, points in moved.items():  # one warning per source that moved more than 3 points, each printed
        warned = [w for w in diag["warnings"] if w.startswith(f"rm source {src!r}:")]
        assert len(warned) == (points > 3.0)
        assert (f"warning: rm source {src!r}: the curated chosen-longer share" in text) == (points > 3.0)
    assert f"is {moved['hh-harmless']:.1f} points further from 50 % than the raw" in text

    stats = runner.invoke(app, ["stats", "--store", str(store.root)])
    assert stats.exit_code == 0, stats.output
    line = next(x for x in stats.output.splitlines() if "hh-harmless" in x and "unbalanced" in x)
    cells = [c.strip() for c in line.split("│") if c.strip()]
    raw, cur, weighted = (
        f"{100 * v:.1f} %"
        for v in (hh["raw"]["share"], hh["curated"]["share"], hh["curated"]["weighted_share"])
    )
    assert cells[:5] == ["unbalanced", "hh-harmless", raw, cur, weighted] and cells[-1] == "yes"
    assert "chosen-longer share of the pairs, by source" in stats.output

    acc = pq.read_table(store.root / "curated" / "unbalanced" / "accounting.parquet").to_pylist()
    pair = next(
        r for r in acc if r["consumer"] == "rm" and r["status"] == "kept" and r["source"] == "hh-harmless"
    )
    ex = runner.invoke(app, ["explain", pair["id"], "--store", str(store.root)])
    assert ex.exit_code == 0, ex.output
    text = " ".join(ex.output.split())
    assert "chosen-longer (characters of the response text; ties left out of shares):" in text
    assert (
        f"source hh-harmless: raw {raw} of" in text
        and f"build unbalanced rm shards {cur} (weighted {weighted})" in text
    )
