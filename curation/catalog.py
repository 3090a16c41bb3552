"""The catalog: every view of a store, composed from the layers that own them.

Each layer defines the views of what it writes, over the views below it:

- the store (``curation.core.store``): ``sft``, ``pairs``, ``rankings``, ``quarantine``, ``duplicates``,
  ``ingest_runs``;
- ingest (``curation.ingest.dedup``): ``near_duplicates``;
- scoring (``curation.scoring.views``): ``scored_pairs``, ``scored_sft``, ``scored_rankings``,
  ``score_groups``;
- builds (``curation.builds.build``): ``curated_accounting``.

This module sits above them all and is what `curate sql`, `curate stats`, the flows and
``catalog.duckdb`` read. A view lists the files it reads when it is made, so every command that writes
the store ends with ``refresh`` (the CLI and the flows do; the library functions do not).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from curation.builds.build import curated_views
from curation.core.errors import StoreError
from curation.ingest.dedup import near_dup_views
from curation.scoring.views import score_views

if TYPE_CHECKING:
    from pathlib import Path

    from curation.core.store import Store


def views(store: Store) -> dict[str, str]:
    """Every view above the base views, in dependency order (later views may select from earlier ones)."""
    return near_dup_views(store) | score_views(store) | curated_views(store)


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """A sandboxed in-memory connection with every view of the store; never locks it."""
    return store.connect(views(store))


def query(store: Store, sql: str, what: str = "query", timeout: float | None = None) -> pa.Table:
    """One checked read-only statement over every view (what `curate sql` runs), stopped after
    ``timeout`` seconds."""
    return store.query(sql, views(store), what, timeout)


def read(store: Store, view: str) -> pa.Table:
    """A whole view as an Arrow table."""
    with contextlib.closing(connect(store)) as con:
        return con.sql(f'SELECT * FROM "{view}"').to_arrow_table()


def refresh(store: Store) -> Path:
    """Rewrite ``catalog.duckdb`` with every view over the store's current files. A catalog that cannot be
    written is one StoreError: what was committed stays committed, and `curate sql` never reads the file."""
    try:
        return store.write_catalog(store.base_views() | views(store))
    except (OSError, duckdb.Error) as exc:
        why = exc.strerror if isinstance(exc, OSError) else " ".join(str(exc).split())
        raise StoreError(
            f"cannot write {store.root / 'catalog.duckdb'} ({why}); everything written is committed and "
            "`curate sql` reads the store without it; the next curate command that writes rewrites it"
        ) from exc
