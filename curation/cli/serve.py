"""`curate serve`: the schedules of prefect.yaml, served from this process."""

from __future__ import annotations

from pathlib import Path

import typer

from curation.cli.common import StoreOpt


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
    from curation.cli.common import fail
    from flows.deploy import DEFAULT_FILE, DeploymentFileError
    from flows.deploy import serve as serve_deployments

    overrides = {k: v for k, v in {"store": store, "landing": landing, "policy": policy}.items() if v}
    try:
        serve_deployments(file or DEFAULT_FILE, overrides, only or None, limit)
    except DeploymentFileError as exc:
        fail(str(exc))
