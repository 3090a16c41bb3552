"""Content-keyed score storage: per-record chunk caches and per-scorer results.

Layout under ``<store>/scores/``::

    cache/<name>/<key>/meta.json          what the cache holds (name, version, fingerprint, params)
    cache/<name>/<key>/chunk-000000.parquet  id + value columns, one file per chunk, written atomically
    <scorer>/<key>/meta.json + result.parquet  a scorer's dataset-level output (what the views read)
    <scorer>/active.json                  {"key": ...}: the result the views use

A *cache* holds per-record values that cost model time (rewards of one model,
embeddings, token lengths, judge scores). Its key hashes (name, version, model
fingerprint, params), so the same record scored the same way is never computed
twice: a rerun reads the chunks, computes only ids that are not there yet, and
writes them as new chunks. A run killed mid-way loses at most the chunk it was
computing. A *result* combines cached values over the whole dataset (means over
models, quantile classes, rescaled smoothing, groups); its key also hashes the
set of record ids, so rerunning on unchanged data computes nothing at all.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

if TYPE_CHECKING:
    from curation.core.store import Store
    from curation.scoring.task import ChunkTask

#: Test hook: SIGKILL the process right after this many chunks were committed (kill/resume tests).
KILL_ENV = "CURATE_SCORE_KILL_AFTER_CHUNKS"


def stable_key(*parts: Any) -> str:
    """A 16-hex-digit key of JSON-able parts (sorted dict keys, so the order of params does not matter)."""
    return xxhash.xxh3_64_hexdigest(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str))


def ids_fingerprint(ids: Sequence[str]) -> str:
    """Identity of a set of record ids (order-free)."""
    h = xxhash.xxh3_64()
    for i in sorted(set(ids)):
        h.update(i.encode())
    return h.hexdigest()


@dataclass(frozen=True)
class CacheSpec:
    """What a per-record cache holds; two specs with equal fields share one cache."""

    name: str
    version: str
    fingerprint: str
    params: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return stable_key(self.name, self.version, self.fingerprint, self.params)

    def meta(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "params": self.params,
            "key": self.key,
        }


@dataclass
class CacheStats:
    requested: int = 0
    cached: int = 0
    computed: int = 0
    chunks_written: int = 0

    def add(self, other: CacheStats) -> None:
        self.requested += other.requested
        self.cached += other.cached
        self.computed += other.computed
        self.chunks_written += other.chunks_written


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def cache_dir(store: Store, spec: CacheSpec) -> Path:
    return store.path("scores", "cache", spec.name, spec.key)


def read_cache(store: Store, spec: CacheSpec) -> pa.Table | None:
    """Every committed chunk of a cache as one table (None when empty)."""
    d = cache_dir(store, spec)
    files = sorted(d.glob("chunk-*.parquet")) if d.is_dir() else []
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def cached_compute(
    store: Store,
    spec: CacheSpec,
    ids: Sequence[str],
    compute: Callable[[np.ndarray], pa.Table] | None = None,
    *,
    schema: pa.Schema,
    order: Sequence[float] | None = None,
    chunk_size: int = 512,
    progress: bool = True,
    desc: str | None = None,
    task: ChunkTask | None = None,
    items: Sequence[Any] | None = None,
) -> tuple[pa.Table, CacheStats]:
    """Values of ``ids`` (same order, duplicates allowed) from the cache, computing only what is missing.

    Either ``compute(positions)`` gets indexes into ``ids`` (one chunk), or ``task(items of those
    positions)`` (a picklable ``ChunkTask``, curation/scoring/task.py) does; either returns a table
    with the columns of ``schema`` (without ``id``), one row per position, in that order. Missing ids
    are processed in a deterministic order (``order`` ascending, e.g. text length, then id) and each
    chunk is committed atomically before the next starts. With a task inside
    ``curation.scoring.parallel.workers(n)``, the chunks are computed on n Ray workers instead
    (curation/scoring/parallel.py) and committed as they arrive. The caller holds the writer lock.
    """
    from curation.scoring import parallel

    if (compute is None) == (task is None):
        raise TypeError("cached_compute takes exactly one of compute and task")
    if task is not None and (items is None or len(items) != len(ids)):
        raise TypeError("cached_compute with a task needs one item per id")
    ids = list(ids)
    d = cache_dir(store, spec)
    _adopt_staged(store, spec)
    existing = read_cache(store, spec)
    have = set(existing.column("id").to_pylist()) if existing is not None else set()
    first_pos: dict[str, int] = {}
    for pos, i in enumerate(ids):
        first_pos.setdefault(i, pos)
    missing = [i for i in first_pos if i not in have]
    stats = CacheStats(requested=len(first_pos), cached=len(first_pos) - len(missing))
    if missing:
        if order is not None:
            missing.sort(key=lambda i: (order[first_pos[i]], i))
        else:
            missing.sort()
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "meta.json").exists():
            write_json_atomic(d / "meta.json", spec.meta() | {"columns": schema.names})
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        bar = _progress(len(missing), desc or spec.name, progress)
        new_tables: list[pa.Table] = []

        def commit(table: pa.Table | None = None, part: Path | None = None) -> None:
            """Commit one chunk (a table computed here, or a part a worker staged) as the next chunk file."""
            target = d / f"chunk-{_next_chunk(d):06d}.parquet"
            if part is not None:
                table = pq.read_table(part)
                os.replace(part, target)
            else:
                store.write_parquet(table, f"scores/cache/{spec.name}/{spec.key}/{target.name}")
            new_tables.append(table)
            stats.computed += table.num_rows
            stats.chunks_written += 1
            bar.update(table.num_rows)
            if kill_after and stats.chunks_written >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        chunks = [missing[start : start + chunk_size] for start in range(0, len(missing), chunk_size)]
        par = parallel.active() if task is not None else None
        try:
            if par is not None:
                work = [(c, [items[first_pos[i]] for i in c]) for c in chunks]
                parallel.map_chunks(par, task, work, schema, d, lambda p: commit(part=p), desc or spec.name)
            else:
                if task is not None:
                    task.setup()
                    compute = _task_compute(task, items)
                for chunk_ids in chunks:
                    positions = np.array([first_pos[i] for i in chunk_ids], dtype=np.int64)
                    commit(parallel.chunk_table(chunk_ids, compute(positions), schema, spec.name))
        finally:
            bar.close()
        parts = ([existing] if existing is not None else []) + new_tables
        existing = pa.concat_tables(parts, promote_options="default")
    if existing is None:
        existing = pa.schema(
            [pa.field("id", pa.string())] + [f for f in schema if f.name != "id"]
        ).empty_table()
    return _align(existing, ids), stats


def _task_compute(task: ChunkTask, items: Sequence[Any]) -> Callable[[np.ndarray], pa.Table]:
    return lambda positions: task([items[i] for i in positions])


def _next_chunk(d: Path) -> int:
    return 1 + max((int(p.stem.split("-")[1]) for p in d.glob("chunk-*.parquet")), default=-1)


def _adopt_staged(store: Store, spec: CacheSpec) -> int:
    """Commit the parts Ray workers staged but no driver committed (the driver was killed). Lock held."""
    from curation.scoring.parallel import staged_parts

    d = cache_dir(store, spec)
    parts = staged_parts(d)
    for part in parts:
        os.replace(part, d / f"chunk-{_next_chunk(d):06d}.parquet")
    return len(parts)


def _align(table: pa.Table, ids: list[str]) -> pa.Table:
    """Rows of ``table`` (keyed by ``id``) in the order of ``ids``."""
    index = {v: k for k, v in enumerate(table.column("id").to_pylist())}
    take = pa.array([index[i] for i in ids], pa.int64())
    return table.take(take)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="rec", disable=not enabled, smoothing=0.1, dynamic_ncols=True)


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ResultSpec:
    """A scorer's dataset-level output: keyed by everything it depends on."""

    scorer: str
    version: str
    fingerprint: str
    params: dict
    data: str  # ids_fingerprint of the records it covers

    @property
    def key(self) -> str:
        return stable_key(self.scorer, self.version, self.fingerprint, self.params, self.data)

    def meta(self) -> dict:
        return {
            "scorer": self.scorer,
            "version": self.version,
            "fingerprint": self.fingerprint,
            "params": self.params,
            "data": self.data,
            "key": self.key,
        }


def result_dir(store: Store, spec: ResultSpec) -> Path:
    return store.path("scores", spec.scorer, spec.key)


def result_done(store: Store, spec: ResultSpec) -> bool:
    d = result_dir(store, spec)
    return (d / "meta.json").exists() and (d / "result.parquet").exists()


def commit_result(
    store: Store,
    spec: ResultSpec,
    table: pa.Table,
    extra: dict[str, pa.Table] | None = None,
    report: dict | None = None,
) -> None:
    """Write result.parquet (+ extra tables), then meta.json (the done-marker), then the active pointer."""
    rel = f"scores/{spec.scorer}/{spec.key}"
    store.write_parquet(table, f"{rel}/result.parquet")
    for name, t in (extra or {}).items():
        store.write_parquet(t, f"{rel}/{name}.parquet")
    write_json_atomic(
        store.path("scores", spec.scorer, spec.key, "meta.json"), spec.meta() | {"report": report or {}}
    )
    activate(store, spec.scorer, spec.key)


def activate(store: Store, scorer: str, key: str) -> None:
    write_json_atomic(store.path("scores", scorer, "active.json"), {"key": key})


def active_key(store: Store, scorer: str) -> str | None:
    p = store.root / "scores" / scorer / "active.json"
    if not p.exists():
        return None
    key = json.loads(p.read_text())["key"]
    if not (store.root / "scores" / scorer / key / "result.parquet").exists():
        return None
    return key


def active_meta(store: Store, scorer: str) -> dict | None:
    key = active_key(store, scorer)
    if key is None:
        return None
    return json.loads((store.root / "scores" / scorer / key / "meta.json").read_text())


def active_table(store: Store, scorer: str, name: str = "result") -> pa.Table | None:
    key = active_key(store, scorer)
    if key is None:
        return None
    p = store.root / "scores" / scorer / key / f"{name}.parquet"
    return pq.read_table(p) if p.exists() else None
