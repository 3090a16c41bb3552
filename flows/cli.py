"""CLI commands of this package (registered on the `curate` app by curation.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app`` (filled in as the package grows)."""
