"""`curate sql` is read-only: statements that write, attach, copy or install are refused; files outside the store are unreachable."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from curation.ingest.pipeline import ingest_paths
from curation.sql import SQLRefused, query


@pytest.fixture(scope="module")
def filled(demo_data, tmp_path_factory):
    from curation.store import Store

    store = Store(tmp_path_factory.mktemp("sql") / "store")
    ingest_paths(store, [str(demo_data / "openai-cookbook/toy_chat_fine_tuning.jsonl")])
    return store


@pytest.mark.parametrize(
    "sql",
    [
        "DROP VIEW sft",
        "CREATE TABLE t AS SELECT 1",
        "COPY (SELECT * FROM sft) TO '/tmp/curate_sql_escape.csv'",
        "ATTACH '/tmp/curate_other.duckdb' AS o",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access=true",
        "INSERT INTO sft SELECT * FROM sft",
        "SELECT 1; DROP VIEW sft",
        "PRAGMA enable_profiling",
        "EXPORT DATABASE '/tmp/curate_export'",
    ],
)
def test_writes_refused(filled, sql, tmp_path):
    with pytest.raises(SQLRefused, match="read-only|cannot parse"):
        query(filled, sql)
    assert query(filled, "SELECT count(*) AS n FROM sft").column("n").to_pylist() == [3]


def test_select_cannot_read_or_write_outside(filled, tmp_path):
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    with pytest.raises(Exception, match="(?i)permission|disabled|not allowed|external"):
        query(filled, f"SELECT * FROM read_csv('{outside}')")


def test_select_with_cte_and_explain(filled):
    t = query(filled, "WITH q AS (SELECT reason FROM quarantine) SELECT count(*) AS n FROM q")
    assert t.column("n").to_pylist() == [2]
    assert query(filled, "EXPLAIN SELECT * FROM sft").num_rows >= 1


def test_cli_sql_refuses_and_writes_out(filled, tmp_path):
    from curation.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["sql", "DROP VIEW sft", "--store", str(filled.root)])
    assert bad.exit_code == 2 and "read-only" in bad.output
    for ext in ("csv", "parquet", "json"):
        out = tmp_path / f"q.{ext}"
        ok = runner.invoke(
            app,
            [
                "sql",
                "SELECT source_row, reason FROM quarantine",
                "--store",
                str(filled.root),
                "--out",
                str(out),
            ],
        )
        assert ok.exit_code == 0, ok.output
        assert out.stat().st_size > 0
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(tmp_path / "q.parquet").column("source_row").to_pylist()) == [3, 4]
