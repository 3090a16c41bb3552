"""`curate explain`: one record's provenance, scores and outcome in each build, on real scored data."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.builds.build import build
from curation.builds.explain import explain
from curation.builds.policy import bundled_policy, load_policy
from curation.core.errors import StoreError


@pytest.fixture
def built(scored_store):
    store, _ = scored_store
    res = build(store, load_policy(bundled_policy()))
    acc = pq.read_table(res.path / "accounting.parquet").to_pylist()
    return store, res, acc


def _first(acc, **where):
    return next(r for r in acc if all(r[k] == v for k, v in where.items()))


def test_kept_pair_shows_scores_and_training_columns(built):
    store, _res, acc = built
    row = _first(acc, consumer="rm", status="kept")
    e = explain(store, row["id"][:10])
    assert e.id == row["id"] and e.kind == "pair"
    assert e.record["source_file"] == row["source_file"] and e.record["source_row"] == row["source_row"]
    # scored by length_bias, and not length-explained: the default policy's not_length_explained kept it
    assert isinstance(e.scores["len_chosen"], int) and e.scores["length_explained"] is False
    (b,) = e.builds
    assert b["outcome"] == row["outcome"] and b["weight"] == row["weight"] and b["margin"] == row["margin"]
    assert b["clause"].startswith("weight = ")


def test_filtered_pair_names_the_clause_and_its_sql(built):
    store, _res, acc = built
    row = _first(acc, consumer="rm", outcome="filtered:not_length_explained")
    e = explain(store, row["id"])
    assert e.scores["length_explained"] is True
    (b,) = e.builds
    assert b["status"] == "filtered"
    assert b["clause"] == "filters[not_length_explained]: NOT coalesce(length_explained, false)"


def test_duplicate_input_rows_are_listed(built):
    store, _res, acc = built
    row = _first(acc, consumer="sft", status="duplicate")
    e = explain(store, row["id"])
    assert any(d["source_row"] == row["source_row"] for d in e.duplicates)
    statuses = sorted(b["status"] for b in e.builds)
    assert "duplicate" in statuses and len(statuses) >= 2  # the record itself and its repeat


def test_unknown_and_malformed_ids_are_clear_errors(built):
    store, _res, _acc = built
    with pytest.raises(StoreError, match="no record with id 'ffffffffffff'"):
        explain(store, "ffffffffffff")
    with pytest.raises(StoreError, match="is not a record id"):
        explain(store, "hello")


def test_cli_explain(built):
    from curation.cli import app

    store, _res, acc = built
    row = _first(acc, consumer="rm", outcome="filtered:not_length_explained")
    out = CliRunner().invoke(app, ["explain", row["id"], "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    assert "filtered:not_length_explained" in out.output
    assert "because: filters[not_length_explained]" in out.output
    assert "len_chosen" in out.output
