"""Options shared by every `curate` command, defined once (and importable without the app itself)."""

from __future__ import annotations

import os

import typer

from curation.store import Store

STORE_HELP = "Store folder (Parquet files + catalog.duckdb). Default: $CURATE_STORE or ./store."

#: The one ``--store`` option of every command: None when not given, then $CURATE_STORE, then ./store.
StoreOpt = typer.Option(None, "--store", "-s", help=STORE_HELP, show_default=False)


def default_store() -> str:
    return os.environ.get("CURATE_STORE") or "store"


def open_store(path: str | None, create: bool = False) -> Store:
    return Store(path or default_store(), create=create)
