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
from curation.scoring.cache import active_key, active_meta
from curation.scoring.schemas import (
    LENGTH_SCHEMA,
    REWARD_MARGIN_SCHEMA,
    SEMANTIC_SCHEMA,
    SPURIOUS_SCHEMA,
    UNCERTAINTY_SCHEMA,
)

if TYPE_CHECKING:
    from curation.core.store import Store

RESULTS: dict[str, pa.Schema] = {
    "reward_margin": REWARD_MARGIN_SCHEMA,
    "length_bias": LENGTH_SCHEMA,
    "spurious_groups": SPURIOUS_SCHEMA,
    "uncertainty": UNCERTAINTY_SCHEMA,
    "semantic_dedup": SEMANTIC_SCHEMA,
}


def _result(store: Store, scorer: str) -> str:
    """SELECT over the active result of ``scorer`` with exactly its schema's columns (typed-empty if none)."""
    schema = RESULTS[scorer]
    key = active_key(store, scorer)
    if key is None:
        return empty_select(schema)
    path = store.root / "scores" / scorer / key / "result.parquet"
    src = f"read_parquet({sql_files([path])})"
    if not set(schema.names) <= set(pq.read_schema(path).names):  # written before a column was added
        src = f"({empty_select(schema)} UNION ALL BY NAME SELECT * FROM {src})"  # NULL in the new ones
    cols = ", ".join(f'"{n}"' for n in schema.names)
    return f"SELECT {cols} FROM {src}"


def _cols(alias: str, schema: pa.Schema, skip: tuple[str, ...] = ("id",)) -> str:
    return ", ".join(f'{alias}."{n}"' for n in schema.names if n not in skip)


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """A sandboxed connection with the base views and the scored views."""
    return store.connect(score_views(store))


def score_views(store: Store) -> dict[str, str]:
    lb_meta = active_meta(store, "length_bias") or {}
    params = lb_meta.get("params", {})
    ratio = float(params.get("ratio", 1.5))
    min_diff = int(params.get("min_diff", 16))
    sem = _result(store, "semantic_dedup")
    sem_cols = "sd.sem_cluster, sd.sem_representative"
    length_explained = (
        f"CASE WHEN lb.id IS NULL THEN NULL ELSE (lb.len_chosen >= {ratio} * lb.len_rejected "
        f"AND lb.len_diff >= {min_diff} AND coalesce(rm.quality_class <> 'clean', true)) END AS length_explained"
    )
    scored_pairs = (
        f"SELECT p.*, {_cols('rm', REWARD_MARGIN_SCHEMA)}, {_cols('lb', LENGTH_SCHEMA)}, {length_explained}, "
        f"{_cols('sg', SPURIOUS_SCHEMA)}, {sem_cols} "
        f"FROM pairs p "
        f"LEFT JOIN ({_result(store, 'reward_margin')}) rm ON rm.id = p.id "
        f"LEFT JOIN ({_result(store, 'length_bias')}) lb ON lb.id = p.id "
        f"LEFT JOIN ({_result(store, 'spurious_groups')}) sg ON sg.id = p.id "
        f"LEFT JOIN ({sem}) sd ON sd.id = p.id AND sd.kind = 'pair'"
    )
    scored_sft = (
        f"SELECT s.*, {_cols('u', UNCERTAINTY_SCHEMA)}, {sem_cols} FROM sft s "
        f"LEFT JOIN ({_result(store, 'uncertainty')}) u ON u.id = s.id "
        f"LEFT JOIN ({sem}) sd ON sd.id = s.id AND sd.kind = 'sft'"
    )
    scored_rankings = (
        f"SELECT r.*, {sem_cols} FROM rankings r LEFT JOIN ({sem}) sd ON sd.id = r.id AND sd.kind = 'ranking'"
    )
    score_groups = (
        "SELECT group_id, count(*) AS size, avg(margin) AS mean_margin, "
        "avg(CASE WHEN quality_class IS NULL THEN NULL WHEN quality_class <> 'clean' THEN 1.0 ELSE 0.0 END) "
        "AS flagged_share, avg(CAST(chosen_longer AS DOUBLE)) AS chosen_longer_share, "
        "any_value(group_weight) AS group_weight "
        "FROM scored_pairs WHERE group_id IS NOT NULL GROUP BY group_id ORDER BY group_id"
    )
    return {
        "scored_pairs": scored_pairs,
        "scored_sft": scored_sft,
        "scored_rankings": scored_rankings,
        "score_groups": score_groups,
    }
