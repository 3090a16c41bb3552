"""Scorers: per-record quality scores written to the store, keyed for caching.

Python API (used by `curate score`, the Prefect flows and the benchmarks)::

    from curation.scoring import run_scorer, versions
    summary = run_scorer(store, "length_bias")
    summary = run_scorer(store, "reward_margin", models=["path/to/rm"])   # or backend="crossfit"
    summary = run_scorer(store, "embeddings", workers=2)                  # model work on 2 Ray workers
    versions(store)   # {"length_bias": {"version", "fingerprint", "params", "key"}, ...}

Every scorer is one ``curation.scoring.contract.Scorer`` subclass in one module of this package;
defining it registers it (``registry()``). See curation/scoring/cache.py for the storage layout,
caching and resume, and curation/scoring/parallel.py for data-parallel scoring on Ray.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from curation.scoring.base import ScoreSummary

if TYPE_CHECKING:
    from curation.core.store import Store
    from curation.scoring.contract import Scorer

_loaded = False


def registry() -> dict[str, type[Scorer]]:
    """name -> scorer class of every scorer (importing each module of this package once registers them)."""
    global _loaded
    from curation.scoring.contract import scorers

    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True
    return {cls.name: cls for cls in scorers()}


def result_scorers() -> tuple[str, ...]:
    """The scorers `curate score all` and the default score flow run, in order."""
    run = [cls for cls in registry().values() if cls.in_all]
    return tuple(
        cls.name for cls in sorted(run, key=lambda c: c.order if c.all_order is None else c.all_order)
    )


def __getattr__(name: str):  # SCORERS (name -> module) and RESULT_SCORERS, computed from the registry
    if name == "SCORERS":
        return {n: cls.__module__ for n, cls in registry().items()}
    if name == "RESULT_SCORERS":
        return result_scorers()
    raise AttributeError(name)


def run_scorer(
    store: Store, name: str, *, workers: int = 1, ray_address: str | None = None, **params: Any
) -> ScoreSummary:
    """Run one scorer over the store; reuses every cached per-record value. Takes the writer lock.

    ``workers`` > 1 (or a ``ray_address``) computes the uncached per-record model work on Ray workers
    (curation/scoring/parallel.py); the results are the same as with one.
    """
    from curation.scoring.parallel import workers as parallel_workers

    scorers = registry()
    if name not in scorers:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(scorers)}")
    gpus = params.pop("gpus_per_worker", None)
    with parallel_workers(workers, ray_address, gpus):
        return scorers[name].run_with(store, **params)


def versions(store: Store) -> dict[str, dict]:
    """For each scorer with an active result: {"version", "fingerprint", "params", "key"} (for manifests)."""
    from curation.scoring.cache import active_meta

    out = {}
    for name, cls in registry().items():
        if cls.result_schema is None:
            continue
        meta = active_meta(store, name)
        if meta:
            out[name] = {k: meta[k] for k in ("version", "fingerprint", "params", "key")}
    return out


__all__ = ["ScoreSummary", "registry", "result_scorers", "run_scorer", "versions"]
