"""`curate sql`: one read-only statement over every view of the store."""

from __future__ import annotations

from pathlib import Path

import typer

from curation.cli.common import StoreOpt, console, esc, fail, open_store, print_table, write_table


def sql(
    query: str = typer.Argument(
        ...,
        help="One read-only statement (SELECT, WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW, or EXPLAIN "
        "[ANALYZE] of one) over the views (sft, pairs, rankings, quarantine, duplicates, ingest_runs, "
        "near_duplicates, scored_*); files are read only through the views.",
    ),
    store: str | None = StoreOpt,
    out: Path | None = typer.Option(
        None, help="Write the result to FILE (.csv, .parquet or .json) instead of printing."
    ),
    limit: int = typer.Option(50, min=0, help="Rows to print (0 = all)."),
    timeout: float = typer.Option(
        0, min=0, help="Stop the query after this many seconds (0 = no limit; Ctrl-C always stops it)."
    ),
) -> None:
    """Query the store with DuckDB SQL: one read-only statement, run in the store's sandbox (curation/core/sql.py);
    never blocks a running writer. Exit code 2 when the statement is refused or fails."""
    from curation.catalog import query as run_query
    from curation.core.sql import SQLRefused

    st = open_store(store)
    try:
        table = run_query(st, query, timeout=timeout or None)
    except SQLRefused as exc:
        fail(str(exc), 2)
        return
    except Exception as exc:  # duckdb errors carry a good message; show it plainly
        fail(str(exc).strip(), 2)
        return
    if out is None:
        print_table(table, limit or None)
        return
    write_table(table, st.output_path(out))  # never over a file of the store
    console.print(f"{table.num_rows} rows → {esc(out)}")
