"""CLI commands of this package (registered on the `curate` app by curation.cli): `demo` and `serve`."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from curation.cli_options import StoreOpt, default_store


def register(app: typer.Typer) -> None:
    """Add `curate demo` and `curate serve` to ``app``."""
    app.command()(demo)
    app.command()(serve)


def demo(
    store: str | None = StoreOpt,
    policy: Path = typer.Option(
        None, help="Policy file for the build (default: curation/policies/default.yaml)."
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

    from curation.cli import console, print_table
    from curation.sql import query
    from curation.store import Store
    from curation.terminal import esc, text
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


def serve(
    file: Path = typer.Option(
        None, "--file", "-f", help="Deployments file (default: the repository's prefect.yaml)."
    ),
    store: str | None = StoreOpt,
    landing: str = typer.Option(None, help="Override the landing folder parameter."),
    policy: str = typer.Option(None, help="Override the policy file parameter."),
    only: list[str] = typer.Option([], "--only", help="Serve only these deployments (repeatable)."),
    limit: int = typer.Option(1, help="Flow runs this process may run at the same time."),
) -> None:
    """Serve the schedules of prefect.yaml from this process (Ctrl-C to stop; schedules pause on exit).

    Uses PREFECT_API_URL when set (a Prefect server or Cloud), otherwise Prefect's
    temporary local server for the life of this process. ``--store`` (or $CURATE_STORE) overrides the
    deployments' store parameter; without either, each deployment keeps the store of its file.
    """
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    store = store or os.environ.get("CURATE_STORE")
    from curation.cli import fail
    from flows.deploy import DEFAULT_FILE, DeploymentFileError
    from flows.deploy import serve as serve_deployments

    overrides = {k: v for k, v in {"store": store, "landing": landing, "policy": policy}.items() if v}
    try:
        serve_deployments(file or DEFAULT_FILE, overrides, only or None, limit)
    except DeploymentFileError as exc:
        fail(str(exc))
