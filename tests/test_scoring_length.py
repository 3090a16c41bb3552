"""length_bias, the score cache and the scored_pairs view on real HH-RLHF pairs."""

from __future__ import annotations

import contextlib

import pytest

from curation import catalog
from curation.scoring import run_scorer, versions
from tests.fixtures.stores import add_hh, build_store


@pytest.fixture
def hh_store(tmp_path, shared_data):
    return build_store(tmp_path, shared_data, hh=300)


def n_pairs(st) -> int:
    with contextlib.closing(catalog.connect(st)) as con:
        return con.sql("SELECT count(*) FROM pairs").fetchall()[0][0]


def test_lengths_match_tokenizer_and_report(hh_store, shared_data, minilm):
    from transformers import AutoTokenizer

    n = n_pairs(hh_store)
    assert n > 290  # a few HH rows are quarantined at ingest
    s = run_scorer(hh_store, "length_bias", progress=False)
    assert s.records == n and s.computed == n and not s.skipped
    with contextlib.closing(catalog.connect(hh_store)) as con:
        rows = (
            con.sql(
                "SELECT chosen[1].content AS c, rejected[1].content AS r, len_chosen, len_rejected, len_diff, "
                "chosen_longer, length_explained FROM scored_pairs"
            )
            .to_arrow_table()
            .to_pylist()
        )
    assert len(rows) == n
    tok = AutoTokenizer.from_pretrained(str(minilm))
    for row in rows[:20]:
        assert row["len_chosen"] == len(tok(row["c"], add_special_tokens=False)["input_ids"])
        assert row["len_diff"] == row["len_chosen"] - row["len_rejected"]
        assert row["chosen_longer"] == (row["len_chosen"] > row["len_rejected"])
    # length_explained needs chosen to be much longer (ratio 1.5 and >= 16 tokens)
    for row in rows:
        if row["length_explained"]:
            assert row["len_chosen"] >= 1.5 * row["len_rejected"] and row["len_diff"] >= 16
    p_longer = sum(r["chosen_longer"] for r in rows) / len(rows)
    assert s.report["p_chosen_longer"] == pytest.approx(p_longer)
    # HH harmless: chosen is NOT usually longer (stack-notes: 44 %)
    assert 0.3 < s.report["p_chosen_longer"] < 0.55
    assert set(versions(hh_store)) == {"length_bias"}


def test_cache_skips_unchanged_and_scores_only_new(hh_store, shared_data, tmp_path):
    n = n_pairs(hh_store)
    first = run_scorer(hh_store, "length_bias", progress=False)
    again = run_scorer(hh_store, "length_bias", progress=False)
    assert again.computed == 0 and again.cached == n and again.skipped and again.key == first.key
    add_hh(hh_store, shared_data, tmp_path, n=3, start=1000)  # 1 % new records
    new = n_pairs(hh_store) - n
    assert new == 3
    third = run_scorer(hh_store, "length_bias", progress=False)
    assert third.computed == new and third.cached == n and third.records == n + new and not third.skipped
    # a different parameter of the result reuses the per-record cache
    fourth = run_scorer(hh_store, "length_bias", ratio=2.0, progress=False)
    assert fourth.computed == 0 and fourth.key != third.key
    assert versions(hh_store)["length_bias"]["params"]["ratio"] == 2.0


def test_views_have_contract_columns_before_any_score(hh_store):
    with contextlib.closing(catalog.connect(hh_store)) as con:
        cols = {r[0]: r[1] for r in con.sql("DESCRIBE scored_pairs").fetchall()}
        sft_cols = {r[0]: r[1] for r in con.sql("DESCRIBE scored_sft").fetchall()}
        assert con.sql("SELECT count(*) FROM scored_pairs WHERE margin IS NULL").fetchall()[0][0] == n_pairs(
            hh_store
        )
    from curation.builds.build import CONTRACT_COLUMNS  # the scoring/curation contract, defined once

    expected = CONTRACT_COLUMNS["scored_pairs"]
    for name, typ in expected.items():
        assert cols[name] == typ, name
    assert any(c.startswith("feat_") for c in cols)
    for name in ("uncertainty", "label_smoothing", "uncertainty_source", "sem_cluster", "sem_representative"):
        assert name in sft_cols
    assert "prompt" in cols and "chosen" in cols  # every column of pairs


def test_cli_score_prints_summary_and_refuses_unknown_params(hh_store):
    from typer.testing import CliRunner

    from curation.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["score", "length_bias", "--store", str(hh_store.root), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "p_chosen_longer" in res.output and "length_bias" in res.output
    res = runner.invoke(
        app, ["score", "length_bias", "--store", str(hh_store.root), "--param", "bogus=1", "--no-progress"]
    )
    assert res.exit_code == 1 and "does not take bogus" in res.output
    res = runner.invoke(app, ["score", "nope", "--store", str(hh_store.root)])
    assert res.exit_code == 1 and "unknown scorer" in res.output
