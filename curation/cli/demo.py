"""`curate demo`: the whole pipeline on the bundled real data with the bundled model (offline, no server)."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from curation.cli.common import StoreOpt, default_store


def demo(
    store: str | None = StoreOpt,
    policy: Path = typer.Option(
        None, help="Policy file for the build (default: curation/builds/policies/default.yaml)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's flow and task logs."),
) -> None:
    """Run the whole pipeline on the bundled real sample data with the bundled model (offline, no server)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a first start migrates a fresh SQLite database: give a busy 2-core machine more than the default 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if not verbose:  # before Prefect is first imported, so its logging config sees it
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from rich.table import Table

    from curation.catalog import query
    from curation.cli.common import console, esc, print_table, text
    from curation.core.store import Store
    from flows.demo import DEFAULT_POLICY, run_demo, usable_queries

    store = store or default_store()
    console.print(f"[bold]curate demo[/] → {esc(Path(store).absolute())}  (Prefect temporary local API)")
    result = run_demo(store, policy or DEFAULT_POLICY, quiet=not verbose)
    st = Store(result.store)

    t = Table(title="ingest (one cached task per file)")
    for col in ("source", "kind", "reader", "rows read", "accepted", "quarantined", "duplicates"):
        t.add_column(col, justify="left" if col in ("source", "kind", "reader") else "right")
    for r in result.flow["ingest"]["files"]:
        t.add_row(
            text(r["source"]),
            r["kind"],
            r["reader"],
            *(str(r[k]) for k in ("rows_read", "accepted", "quarantined", "duplicates")),
        )
    console.print(t)

    steps = Table(title="pipeline tasks")
    steps.add_column("task")
    steps.add_column("state")
    for s in result.flow["steps"]:
        colour = "green" if s["state"] == "Completed" else "cyan" if s["state"] == "Cached" else "red"
        steps.add_row(text(s["task"]), text(s["state"], colour))
    console.print(steps)
    for line in result.skipped:
        console.print(f"[yellow]skipped:[/] {esc(line)}")

    console.print(f"\n[bold]store:[/]  {esc(st.root)}")
    console.print(f"[bold]report:[/] {esc(result.report or '(no report: the report step is not available)')}")
    console.print(f"[bold]time:[/]   {result.seconds:.1f} s")
    store_arg = shlex.quote(str(st.root))
    console.print("\n[bold]Try these queries:[/]")
    for what, sql in usable_queries(st):
        console.print(f"\n[dim]# {esc(what)}[/]\ncurate sql {esc(shlex.quote(sql))} --store {esc(store_arg)}")
        print_table(query(st, sql), 10)
