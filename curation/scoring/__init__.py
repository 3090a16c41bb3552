"""Scorers: per-record quality scores written to the store, keyed for caching.

Python API (used by `curate score`, the Prefect flows and the benchmarks)::

    from curation.scoring import run_scorer, versions
    summary = run_scorer(store, "length_bias")
    summary = run_scorer(store, "reward_margin", models=["path/to/rm"])   # or backend="crossfit"
    summary = run_scorer(store, "reward_margin", backend="judge", models=["judge-name"],
                         base_url="http://127.0.0.1:8000/v1")              # an LLM judge, both orders
    versions(store)   # {"length_bias": {"version", "fingerprint", "params", "key"}, ...}

Scorers: length_bias, reward_margin, uncertainty, spurious_groups, semantic_dedup, embeddings.
See curation/scoring/cache.py for the storage layout, caching and resume.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from curation.scoring.base import ScoreSummary

if TYPE_CHECKING:
    from curation.core.store import Store

#: scorer name -> module with ``run(store, **params) -> ScoreSummary``
SCORERS = {
    "length_bias": "curation.scoring.length_bias",
    "reward_margin": "curation.scoring.reward_margin",
    "uncertainty": "curation.scoring.uncertainty",
    "spurious_groups": "curation.scoring.spurious_groups",
    "semantic_dedup": "curation.scoring.semantic",
    "embeddings": "curation.scoring.embeddings",
}
#: scorers whose results the views join (the order `curate score all` runs them in)
RESULT_SCORERS = ("length_bias", "reward_margin", "spurious_groups", "uncertainty", "semantic_dedup")


def run_scorer(store: Store, name: str, **params: Any) -> ScoreSummary:
    """Run one scorer over the store; reuses every cached per-record value. Takes the writer lock."""
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    module = importlib.import_module(SCORERS[name])
    return module.run(store, **params)


def versions(store: Store) -> dict[str, dict]:
    """For each scorer with an active result: {"version", "fingerprint", "params", "key"} (for manifests)."""
    from curation.scoring.cache import active_meta

    out = {}
    for name in RESULT_SCORERS:
        meta = active_meta(store, name)
        if meta:
            out[name] = {k: meta[k] for k in ("version", "fingerprint", "params", "key")}
    return out


__all__ = ["SCORERS", "ScoreSummary", "run_scorer", "versions"]
