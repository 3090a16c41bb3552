"""`curate report`: a self-contained HTML quality report of a build."""

from __future__ import annotations

from pathlib import Path

import typer

from curation.cli.common import StoreOpt


def report(
    store: str | None = StoreOpt,
    build: str | None = typer.Option(None, help="Build to report on (default: the newest build)."),
    out: Path = typer.Option(Path("report.html"), help="Output HTML file (self-contained, opens offline)."),
) -> None:
    """A self-contained HTML quality report with plots of scores, lengths, groups, ε and source mix."""
    from curation.builds.report import render_report
    from curation.cli.common import console, esc, fail, open_store
    from curation.core.errors import StoreError
    from curation.core.names import safe_name

    try:
        if build is not None:
            safe_name(build, "build name")
        st = open_store(store)
        path = render_report(st, st.output_path(out), build=build)
    except StoreError as exc:
        fail(str(exc))
        return
    console.print(f"report → {esc(path)}")
