"""Content keys for Prefect task caching: a task is skipped when what it would read has not changed.

Keys hash *content*, never paths or run ids: input file sha256s and reader
options for ingest, the set of committed ingest units of a kind for the steps
that read that kind, scorer name + version + model fingerprint + params for
scoring, the policy file's hash and the active score keys for a build. Cached
results live inside the store (``<store>/.prefect/``), so deleting or moving a
store never leaves a cache that claims work the store does not hold.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext

from curation.core.store import Store

#: Bump when a task's meaning changes in a way its inputs do not show (invalidates every cached result).
FLOW_CACHE_VERSION = "1"

KIND_FILES = {"sft": "sft.parquet", "pair": "pair.parquet", "ranking": "ranking.parquet"}


def digest(*parts: Any) -> str:
    """A stable 32-hex-digit hash of JSON-able parts (dict keys sorted)."""
    text = json.dumps([FLOW_CACHE_VERSION, *parts], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the same function ingest uses for its unit keys)."""
    from curation.core.hashing import file_sha256

    return file_sha256(Path(path))


def kind_data_key(store: Store, kind: str) -> str:
    """What the store holds for a kind: the names of its committed ingest units.

    Unit names are themselves content hashes (file sha256, reader, options,
    schema version), so this changes exactly when records of ``kind`` are added.
    """
    name = KIND_FILES[kind]
    units = sorted(p.parent.name for p in store.files(f"ingest/*/{name}"))
    return digest("units", kind, units)


def result_storage(store: Store) -> Path:
    """Where task results and cache records of this store live (Prefect reads a Path as local storage)."""
    folder = store.root / ".prefect" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def content_cache(key_fn) -> CacheKeyFnPolicy:
    """A cache policy from ``key_fn(**task_parameters) -> str`` (the Prefect context is not needed)."""

    def _key(ctx: TaskRunContext, params: dict[str, Any]) -> str:
        return f"{ctx.task.name}-{key_fn(**params)}"

    return CacheKeyFnPolicy(cache_key_fn=_key)
