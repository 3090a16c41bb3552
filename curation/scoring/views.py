"""The scored_* views: every record joined to the active result of every scorer (NULL where not run).

- ``scored_pairs``: pairs + reward_margin + length_bias (+ length_explained) + spurious_groups
  (group_id, group_weight, feat_*) + semantic near-duplicates (sem_cluster, sem_representative).
- ``scored_sft``: sft + uncertainty (uncertainty, label_smoothing, uncertainty_source) + semantic.
- ``scored_rankings``: rankings + semantic.
- ``score_groups``: the spurious-group table (size, mean margin, share of flagged pairs, weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.names import sql_files
from curation.core.store import empty_select
from curation.scoring.cache import active_key

if TYPE_CHECKING:
    from curation.core.store import Store

#: scored view -> (the base view it extends, its alias)
SCORED_VIEWS = {
    "scored_pairs": ("pairs", "p"),
    "scored_sft": ("sft", "s"),
    "scored_rankings": ("rankings", "r"),
}


def result_schemas() -> dict[str, pa.Schema]:
    """scorer -> result schema, for every registered scorer with a result."""
    from curation.scoring import registry

    return {n: c.result_schema for n, c in registry().items() if c.result_schema is not None}


def __getattr__(name: str):  # RESULTS: computed from the registry
    if name == "RESULTS":
        return result_schemas()
    raise AttributeError(name)


def _result(store: Store, scorer: str) -> str:
    """SELECT over the active result of ``scorer`` with exactly its schema's columns (typed-empty if none)."""
    schema = result_schemas()[scorer]
    key = active_key(store, scorer)
    if key is None:
        return empty_select(schema)
    path = store.root / "scores" / scorer / key / "result.parquet"
    src = f"read_parquet({sql_files([path])})"
    if not set(schema.names) <= set(pq.read_schema(path).names):  # written before a column was added
        src = f"({empty_select(schema)} UNION ALL BY NAME SELECT * FROM {src})"  # NULL in the new ones
    cols = ", ".join(f'"{n}"' for n in schema.names)
    return f"SELECT {cols} FROM {src}"


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """A sandboxed connection with the base views and the scored views."""
    return store.connect(score_views(store))


def score_views(store: Store) -> dict[str, str]:
    """The scored views: each base view LEFT JOINed to the active result of every registered scorer that
    names it (the scorer's alias is its name), with the scorers' columns and derived columns in order."""
    from curation.scoring import registry

    classes = list(registry().values())  # every scorer module imported, so every scorer registered
    out = {}
    for view, (base, alias) in SCORED_VIEWS.items():
        cols, joins = [f"{alias}.*"], []
        for cls in classes:
            if cls.result_schema is None or view not in cls.views:
                continue
            a = f'"{cls.name}"'
            cols += [f'{a}."{f.name}"' for f in cls.columns()]
            cols += [f"{sql} AS {name}" for name, sql, _ in cls.derived_columns(store).get(view, [])]
            kind = cls.views[view]
            on = f"{a}.id = {alias}.id" + (f" AND {a}.kind = '{kind}'" if kind else "")
            joins.append(f"LEFT JOIN ({_result(store, cls.name)}) {a} ON {on}")
        out[view] = f"SELECT {', '.join(cols)} FROM {base} {alias} " + " ".join(joins)
    for cls in classes:
        out |= cls.extra_views()
    return out
