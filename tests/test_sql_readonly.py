"""`curate sql` is read-only: statements that write, attach, copy or install are refused; files outside the store are unreachable."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from curation import catalog
from curation.catalog import query
from curation.core.sql import SQLRefused
from curation.ingest.pipeline import ingest_paths
from tests.fixtures.stores import ingest_real_pairs_and_sft, tree_fingerprint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def filled(demo_data, tmp_path_factory):
    from curation.core.store import Store

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


def test_a_query_past_its_time_limit_is_stopped_in_one_line(filled):
    """A query that runs for hours (round three: `count(*)` over 10^13 rows) had no bound but Ctrl-C."""
    import time

    from curation.cli import app

    runner = CliRunner()
    started = time.perf_counter()
    slow = runner.invoke(
        app,
        ["sql", "SELECT count(*) FROM range(10000000000000)", "--store", str(filled.root), "--timeout", "1"],
    )
    assert time.perf_counter() - started < 60  # it ran for at least 120 s without the limit
    assert slow.exit_code == 2 and "stopped after 1 s (the time limit)" in slow.output, slow.output
    quick = runner.invoke(
        app, ["sql", "SELECT count(*) AS n FROM sft", "--store", str(filled.root), "--timeout", "30"]
    )
    assert quick.exit_code == 0 and "n" in quick.output, quick.output


# ------------------------------------------------ issue 23: items 1, 4, 5 and 15, on real data
@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    return ingest_real_pairs_and_sft(tmp_path_factory.mktemp("sql_real") / "store", shared_data)


@pytest.fixture
def real_copy(real, tmp_path):
    """A private copy of the real store, for tests that would damage it if the sandbox failed."""
    from curation.core.store import Store

    shutil.copytree(real.root, tmp_path / "store", symlinks=True)
    return Store(tmp_path / "store")


def _counts(store) -> tuple[int, int]:
    t = query(
        store,
        "SELECT (SELECT count(*) FROM pairs) AS pairs, (SELECT sum(accepted) FROM ingest_runs "
        "WHERE kind = 'pair') AS accepted",
    )
    return t.column("pairs")[0].as_py(), t.column("accepted")[0].as_py()


def test_item1_explain_analyze_copy_cannot_empty_a_unit_through_the_cli(real_copy):
    """Issue 23 item 1: EXPLAIN ANALYZE COPY ... TO '<unit>/pair.parquet' passed the statement check and emptied
    the unit. Every statement is now checked as DuckDB parses it, what EXPLAIN wraps included."""
    (unit_file,) = real_copy.files("ingest/*/pair.parquet")
    pairs, accepted = _counts(real_copy)
    before = tree_fingerprint(real_copy.root)  # after a first query, which makes the spill folder .sql-tmp/
    assert pairs == accepted > 250
    for sql in (
        f"EXPLAIN ANALYZE COPY (SELECT * FROM pairs LIMIT 0) TO '{unit_file}' (FORMAT parquet)",
        f"/* just a plan */ explain analyse copy (select * from pairs limit 0) to '{unit_file}' (format parquet)",
        f"EXPLAIN COPY (SELECT * FROM pairs LIMIT 0) TO '{unit_file}' (FORMAT parquet)",
        f"SELECT 1; COPY (SELECT * FROM pairs LIMIT 0) TO '{unit_file}' (FORMAT parquet)",
    ):
        res = subprocess.run(
            [sys.executable, "-m", "curation.cli", "sql", sql, "--store", str(real_copy.root)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert res.returncode == 2, (sql, res.stdout, res.stderr)
        assert "read-only SQL" in res.stderr
        assert "COPY" in res.stderr or "one statement at a time" in res.stderr
    assert tree_fingerprint(real_copy.root) == before
    assert _counts(real_copy) == (pairs, accepted)


def test_item4_temp_folder_link_in_the_working_folder_opens_nothing(real_copy, tmp_path, monkeypatch):
    """Issue 23 item 4: DuckDB allows its temporary folder (<cwd>/.tmp by default) whatever it links to, so
    `ln -s / .tmp` opened every file to `curate sql` and to a policy's weight. The spill folder is now a fresh
    folder inside the store, and neither entry point can name a file."""
    from curation.builds.build import build, open_connection
    from curation.builds.policy import PolicyError, bundled_policy, load_policy, parse_policy
    from curation.catalog import connect as readonly_connection
    from curation.cli import app

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("curate-secret-4\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / ".tmp").symlink_to(outside)
    monkeypatch.chdir(cwd)
    secret = str(outside / "secret.txt")

    res = CliRunner().invoke(
        app, ["sql", f"select content from read_text('{secret}')", "--store", str(real_copy.root)]
    )
    assert res.exit_code == 2 and "curate-secret-4" not in res.output
    assert "read_text" in res.output and "not allowed" in res.output

    # the connection on its own (the statement check bypassed) cannot read it either, nor through .tmp
    with contextlib.closing(readonly_connection(real_copy)) as con:
        temp = con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0]
        assert temp.startswith(str(real_copy.root.resolve() / ".sql-tmp") + os.sep)
        for path in (secret, str(cwd / ".tmp" / "secret.txt"), ".tmp/secret.txt"):
            with pytest.raises(duckdb.PermissionException):
                con.sql(f"SELECT content FROM read_text('{path}')").fetchall()

    # the same read in a policy's weight: refused before any shard is written
    data = json.loads(load_policy(bundled_policy()).canonical_json())
    data["consumers"]["rm"]["weight"] = f"ascii(left((SELECT content FROM read_text('{secret}')), 1))::DOUBLE"
    with pytest.raises(PolicyError, match=r"consumers\.rm\.weight .*read_text.* not allowed"):
        build(real_copy, parse_policy(data))
    assert not (real_copy.root / "curated").exists()
    with contextlib.closing(open_connection(real_copy)) as con, pytest.raises(duckdb.PermissionException):
        con.sql(f"SELECT ascii(left(content, 1)) FROM read_text('{cwd / '.tmp' / 'secret.txt'}')").fetchall()


def test_item5_where_cannot_smuggle_statements_or_files(real_copy, tmp_path):
    """Issue 23 item 5: `curate score --where` ran unchecked on an unsandboxed connection and took several
    statements, so it could write any file. It is now one expression, checked and run by the sandbox."""
    from curation.cli import app

    pwned = tmp_path / "pwned.csv"
    secret = tmp_path / "secret.txt"
    secret.write_text("curate-secret-5\n")
    runner = CliRunner()
    hostile = [
        f"true; COPY (SELECT 'x') TO '{pwned}'; SELECT id, source, prompt, chosen, rejected FROM pairs WHERE true",
        f"true) UNION ALL SELECT id, source, prompt, chosen, rejected FROM pairs; COPY (SELECT 1) TO '{pwned}' --",
        f"(SELECT count(*) FROM read_text('{secret}')) > 0",
        f"source IN (SELECT content FROM read_csv('{secret}'))",
        f"source = 'x' /* ; COPY (SELECT 1) TO '{pwned}' */",
    ]
    for where in hostile:
        res = runner.invoke(
            app, ["score", "length_bias", "--store", str(real_copy.root), "--no-progress", "--where", where]
        )
        assert res.exit_code == 1, (where, res.output)
        assert "--where" in res.output and "curate-secret-5" not in res.output
        assert not pwned.exists()
    assert not (real_copy.root / "scores").exists()

    ok = runner.invoke(
        app,
        [
            "score",
            "length_bias",
            "--store",
            str(real_copy.root),
            "--no-progress",
            "--where",
            "source_row < 40",
        ],
    )
    assert ok.exit_code == 0, ok.output
    n = query(real_copy, "SELECT count(*) AS n FROM scored_pairs WHERE len_chosen IS NOT NULL").column("n")
    assert (
        n[0].as_py()
        == query(real_copy, "SELECT count(*) AS n FROM pairs WHERE source_row < 40").column("n")[0].as_py()
        > 30
    )


def test_item5_uncertainty_column_is_one_checked_expression(real_copy, tmp_path):
    """The uncertainty scorer's `column` source is user SQL too: same check, same sandbox."""
    from curation.core.sql import SQLRefused
    from curation.scoring import run_scorer

    secret = tmp_path / "secret.txt"
    secret.write_text("0.5\n")
    for column in (
        f"(SELECT content::DOUBLE FROM read_text('{secret}'))",
        f"0.5; COPY (SELECT 1) TO '{tmp_path / 'pwned.csv'}'",
        "0.5 -- a comment hiding the rest",
    ):
        with pytest.raises(SQLRefused, match="column"):
            run_scorer(real_copy, "uncertainty", source="column", column=column, progress=False)
    assert not (tmp_path / "pwned.csv").exists()
    s = run_scorer(
        real_copy,
        "uncertainty",
        source="column",
        column="length(messages[-1].content) % 100",
        column_scale=99,
        progress=False,
    )
    rows = query(
        real_copy, "SELECT length(messages[-1].content) % 100 AS l, uncertainty FROM scored_sft"
    ).to_pylist()
    assert s.records == len(rows) > 400
    assert all(abs(r["uncertainty"] - r["l"] / 99) < 1e-9 for r in rows)


def test_item15_several_statements_are_refused_with_a_clear_message(real):
    """Issue 23 item 15: `curate sql "select 1; select 2"` died with "Resource In Use". One statement is
    the contract; the message says so."""
    from curation.cli import app

    for sql in (
        "select 1; select 2",
        "SELECT count(*) FROM pairs;\nSELECT count(*) FROM sft;",
        "select 1;;select 2",
    ):
        res = CliRunner().invoke(app, ["sql", sql, "--store", str(real.root)])
        assert res.exit_code == 2, res.output
        assert "one statement at a time" in res.output and "holds 2" in res.output
        assert "Resource" not in res.output
    ok = CliRunner().invoke(app, ["sql", "select count(*) AS n from pairs;", "--store", str(real.root)])
    assert ok.exit_code == 0 and str(_counts(real)[0]) in ok.output


def test_a_unit_that_links_out_of_the_store_is_refused_not_read(real_copy, tmp_path):
    """A planted `ingest/<unit>` link to a folder outside: the views do not follow it, and do not silently
    leave it out either: the query fails naming the link instead of counting outside rows."""
    outside = tmp_path / "outside_unit"
    outside.mkdir()
    (unit_file,) = real_copy.files("ingest/*/pair.parquet")
    shutil.copy(unit_file, outside / "pair.parquet")
    (real_copy.root / "ingest" / "zz-planted").symlink_to(outside, target_is_directory=True)
    res = CliRunner().invoke(
        app_(), ["sql", "SELECT count(*) AS n FROM pairs", "--store", str(real_copy.root)]
    )
    assert res.exit_code == 2
    assert "zz-planted" in res.output and "links outside the store" in res.output
    # the scorers' reader (and every other store connection) is the same sandbox
    from curation.core.errors import StoreError
    from curation.scoring.texts import load_records

    with pytest.raises(StoreError, match="zz-planted.*links outside the store"):
        load_records(real_copy, "pair")


def test_spill_files_stay_inside_the_store_and_are_removed(real_copy, monkeypatch):
    """A sort larger than memory spills into a fresh folder under <store>/.sql-tmp/, removed on close."""
    from curation.core.sql import SPILL_DIR, sandbox

    con = duckdb.connect(":memory:")
    con.execute("SET memory_limit = '64MB'")  # before the sandbox locks the configuration
    sandbox(con, real_copy.root)
    with pytest.raises(duckdb.InvalidInputException, match="locked"):
        con.execute("SET memory_limit = '10GB'")
    spill = Path(con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0])
    assert spill.parent == real_copy.root.resolve() / SPILL_DIR and not spill.exists()
    reader = con.sql("SELECT i, hash(i) AS h FROM range(12000000) t(i) ORDER BY h").to_arrow_reader(100_000)
    next(iter(reader))
    assert any(spill.iterdir()), "the sort did not spill: raise the row count"
    del reader
    con.close()
    assert not spill.exists()


def test_spill_folder_is_never_a_link_and_read_only_stores_do_not_spill(real_copy, tmp_path, monkeypatch):
    from curation.core.errors import StoreError
    from curation.core.sql import SPILL_DIR, spill_folder

    root = real_copy.root.resolve()
    shutil.rmtree(root / SPILL_DIR, ignore_errors=True)
    (root / SPILL_DIR).symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(StoreError, match=r"\.sql-tmp is a link to .*remove it"):
        catalog.connect(real_copy)
    (root / SPILL_DIR).unlink()

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", denied)
        assert spill_folder(root) == ""  # no spilling rather than spilling outside the store
    assert spill_folder(root).startswith(str(root / SPILL_DIR) + os.sep)


def test_spill_folders_of_dead_processes_are_removed(real_copy):
    import socket

    from curation.core.sql import SPILL_DIR

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    parent = real_copy.root.resolve() / SPILL_DIR
    parent.mkdir(exist_ok=True)
    host = socket.gethostname()
    stale = parent / f"{host}_{int(dead.stdout)}_0123456789ab"
    live = parent / f"{host}_{os.getpid()}_0123456789ab"
    other_host = parent / f"not-{host}_{int(dead.stdout)}_0123456789ab"
    for d in (stale, live, other_host):
        d.mkdir()
        (d / "duckdb_temp_block").write_bytes(b"x")
    catalog.connect(real_copy).close()
    assert not stale.exists() and live.exists() and other_host.exists()


def app_():
    from curation.cli import app

    return app


def test_deeply_nested_where_is_one_line_not_a_traceback(real_copy):
    """Round three: `--where` of 900 NOTs died with a RecursionError traceback (Python's JSON reader
    recursing over DuckDB's parse tree); now exit 1 naming `--where`, nothing scored."""
    from curation.cli import app

    res = CliRunner().invoke(
        app,
        [
            "score",
            "length_bias",
            "--store",
            str(real_copy.root),
            "--no-progress",
            "--where",
            "not " * 900 + "true",
        ],
    )
    assert res.exit_code == 1, res.output[-800:]
    assert "--where" in res.output and "nests too deeply" in res.output, res.output[-800:]
    assert not (real_copy.root / "scores").exists()


def test_a_scorer_parameter_never_breaks_the_scored_views(real_copy):
    """Round three: `curate score length_bias --param ratio=nan` (or inf) was accepted, stored, and spliced
    into the scored_pairs view as bare text: from then on every `curate sql`, `stats` and `build` on the store
    failed (`Referenced column "nan" not found`). Parameters now have their field's type (finite numbers),
    and the view writes the stored number as a typed literal, so a NaN an older run stored reads too."""
    from curation.cli import app
    from curation.scoring.length_bias import LengthBias, LengthBiasConfig

    runner = CliRunner()
    root = str(real_copy.root)
    for param, why in (
        ("ratio=nan", "parameter ratio must be a finite number"),
        ("ratio=inf", "parameter ratio must be a finite number"),
        ("ratio=NaN", "parameter ratio must be a finite number"),
        ("ratio=abc", "parameter ratio must be a finite number"),
        ("min_diff=1.5", "parameter min_diff must be a whole number"),
        ("chunk_size=0", "chunk_size must be a whole number of at least 1"),
        ("chunk_size=abc", "chunk_size must be a whole number of at least 1"),
    ):
        res = runner.invoke(app, ["score", "length_bias", "--store", root, "--no-progress", "--param", param])
        assert res.exit_code == 1 and why in res.output, (param, res.output)
    assert not (real_copy.root / "scores").exists()
    res = runner.invoke(app, ["score", "length_bias", "--store", root, "--no-progress", "--param", "ratio=2"])
    assert res.exit_code == 0, res.output

    n_pairs = _counts(real_copy)[0]
    for stored in ("nan", float("nan"), "abc"):  # as older runs stored it (the CLI passed text on)
        LengthBias(LengthBiasConfig(ratio=stored)).run(real_copy, progress=False)
        res = runner.invoke(
            app, ["sql", "SELECT count(length_explained) AS e FROM scored_pairs", "--store", root]
        )
        assert res.exit_code == 0, (stored, res.output)
    res = runner.invoke(
        app, ["sql", "SELECT count(*) AS n, count(length_explained) AS e FROM scored_pairs", "--store", root]
    )
    assert res.exit_code == 0, res.output
    assert query(real_copy, "SELECT count(*) AS n FROM scored_pairs").column("n")[0].as_py() == n_pairs
