"""`curate explain <id>`: what happened to one record and why.

Answers from the store alone: the record's provenance (base views, ingest
duplicates, quarantine is by file/row so it has no id), its scores and class
(the scored view, every scalar column), its near-duplicate clusters (prompt and
record level), for a pair its chosen-longer standing (its own character lengths
and its source's chosen-longer share: raw, in its quality class, and in each
build's rm shards; curation.builds.length_diagnostics), and for each build its outcome
from ``accounting.parquet`` (kept with weight, margin, soft label, flip and
group; or the clause that dropped it, with that clause's SQL from the
manifest's policy).
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import polars as pl

from curation.builds.build import build_names, open_connection, read_manifest, relation_name, store_frame
from curation.builds.length_diagnostics import raw_diagnostics
from curation.builds.policy import CONSUMER_VIEWS
from curation.core.errors import StoreError
from curation.core.names import duckdb_path
from curation.core.store import Store

_HEX = re.compile(r"^[0-9a-f]{6,32}$")
_NESTED = ("messages", "prompt", "chosen", "rejected", "candidates")


@dataclass
class Explanation:
    id: str
    kind: str | None
    record: dict[str, Any] = field(default_factory=dict)  # provenance
    scores: dict[str, Any] = field(default_factory=dict)  # scalar columns of the scored view
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # input rows that repeated this content
    builds: list[dict[str, Any]] = field(default_factory=list)  # per build: accounting row(s) + clause
    length: dict[str, Any] = field(default_factory=dict)  # pairs: chosen-longer of the pair and its source


def resolve_id(store: Store, prefix: str) -> str:
    """A full id from an id or a unique prefix of at least 6 hex characters."""
    p = prefix.strip().lower()
    if not _HEX.match(p):
        raise StoreError(
            f"{prefix!r} is not a record id (32 hex characters, or a unique prefix of 6 or more)"
        )
    with contextlib.closing(open_connection(store)) as con:
        ids = con.execute(
            "SELECT DISTINCT id FROM (SELECT id FROM sft UNION ALL SELECT id FROM pairs "
            "UNION ALL SELECT id FROM rankings UNION ALL SELECT id FROM duplicates) WHERE starts_with(id, ?) "
            "ORDER BY id LIMIT 5",
            [p],
        ).fetchall()
    if not ids:
        raise StoreError(f"no record with id {prefix!r} in {store.root}")
    if len(ids) > 1:
        raise StoreError(f"id prefix {prefix!r} is ambiguous: {', '.join(i for (i,) in ids)} ...")
    return ids[0][0]


def explain(store: Store, record_id: str, build: str | None = None) -> Explanation:
    rid = resolve_id(store, record_id)
    out = Explanation(id=rid, kind=None)
    with contextlib.closing(open_connection(store)) as con:
        for consumer, (kind, _view) in CONSUMER_VIEWS.items():
            rel = con.sql(f"SELECT * FROM {relation_name(consumer)} WHERE id = $1", params=[rid])
            rows = rel.fetchall()
            if not rows:
                continue
            row = dict(zip(rel.columns, rows[0], strict=True))
            out.kind = kind
            out.record = {
                k: row.get(k) for k in ("source", "source_file", "source_row", "reader", "ingest_run")
            }
            out.scores = {
                k: _plain(v)
                for k, v in row.items()
                if k not in _NESTED and k not in out.record and k not in ("id", "meta")
            }
            break
        dups = con.execute(
            "SELECT kind, source, source_file, source_row, ingest_run FROM duplicates WHERE id = ? "
            "ORDER BY source_file, source_row",
            [rid],
        )
        cols = [d[0] for d in dups.description]
        out.duplicates = [dict(zip(cols, r, strict=True)) for r in dups.fetchall()]
        if out.kind is None and out.duplicates:
            out.kind = out.duplicates[0]["kind"]
    names = [build] if build else build_names(store)
    for name in names:
        out.builds.extend(_build_outcomes(store, name, rid))
    if out.kind == "pair" and out.record.get("source") is not None:
        out.length = _length(store, rid, out.record["source"], out.scores.get("quality_class"), names)
    return out


def _length(store: Store, rid: str, source: str, klass: str | None, builds: list[str]) -> dict[str, Any]:
    """The pair's character lengths and its source's chosen-longer shares (raw, its class, each build)."""
    src = store_frame(store, source)
    chosen, rejected = src.filter(pl.col("id") == rid).select("__chars_chosen", "__chars_rejected").row(0)
    raw = raw_diagnostics(src).get(source, {})
    out: dict[str, Any] = {
        "chars_chosen": chosen,
        "chars_rejected": rejected,
        "chosen_longer": None if chosen == rejected else chosen > rejected,
        "source": source,
        "source_raw": raw.get("raw"),
        "quality_class": klass,
        "source_class": (raw.get("raw_by_class") or {}).get(klass) if klass else None,
        "builds": {},
    }
    for name in builds:
        diag = (read_manifest(store, name).get("length_diagnostics") or {}).get("by_source", {})
        if source in diag:
            out["builds"][name] = diag[source].get("curated")
    return out


def _build_outcomes(store: Store, name: str, rid: str) -> list[dict[str, Any]]:
    folder = store.path("curated", name)
    acc_path = folder / "accounting.parquet"
    if not acc_path.is_file():
        raise StoreError(f"no build {name!r} in {store.root} (run `curate build` first)")
    import duckdb

    manifest = orjson.loads((folder / "manifest.json").read_bytes())
    con = duckdb.connect(":memory:")
    try:
        rel = con.execute(
            "SELECT * EXCLUDE (id) FROM read_parquet(?) WHERE id = ? ORDER BY source_file, source_row",
            [duckdb_path(acc_path), rid],
        )
        cols = [d[0] for d in rel.description]
        rows = [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
    finally:
        con.close()
    for r in rows:
        r["build"] = name
        r["clause"] = _clause(manifest.get("policy", {}), r["consumer"], r["outcome"])
        for k in ("weight", "margin", "soft_label", "label_smoothing"):
            r[k] = _plain(r.get(k))
    return rows


def _clause(policy: dict, consumer: str, outcome: str) -> str | None:
    """The SQL (or rule) behind a drop, from the manifest's copy of the policy."""
    c = (policy.get("consumers") or {}).get(consumer) or {}
    if outcome.startswith("filtered:remedy."):
        cls = outcome.split(".", 1)[1]
        return f"remedies.{cls} = drop (quality_class = '{cls}')"
    if outcome.startswith("filtered:"):
        name = outcome.split(":", 1)[1]
        for f in c.get("filters", []):
            if f["name"] == name:
                return f"filters[{name}]: {f['where']}"
    if outcome.startswith("capped:"):
        return f"mix: {orjson.dumps(c.get('mix', {})).decode()}"
    if outcome.startswith("near_duplicate_of:"):
        mode = (policy.get("dedup") or {}).get("near_duplicates", "drop")
        if mode == "drop_prompt" or consumer == "sft":
            return f"dedup.near_duplicates = {mode}: its prompt is a near duplicate of that record's (prompt level)"
        return (
            f"dedup.near_duplicates = {mode}: same prompt cluster and near-identical responses "
            "as that record (record level)"
        )
    if outcome.startswith("semantic_duplicate_of:"):
        return "dedup.semantic_duplicates = drop (not the cluster's representative)"
    if outcome.startswith("kept:"):
        return f"weight = {c.get('weight')}"
    return None


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
