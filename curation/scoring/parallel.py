"""Data-parallel model work on Ray: the uncached chunks of a per-record cache computed by N actors.

``with workers(2): run_scorer(...)`` (or ``curate score X --workers 2``) makes every
``cached_compute`` that was given a ``ChunkTask`` hand its missing chunks to a pool of Ray
actors instead of computing them in-process. Each actor builds the task once (loads its model),
computes one chunk at a time and writes it atomically (temporary name + rename) as
``cache/<name>/<key>/incoming/part-<hash>.parquet``, without the writer lock. The driver, which
holds the lock, commits each staged part as the next ``chunk-NNNNNN.parquet`` as it arrives.

The chunks are cut exactly as the serial path cuts them (same missing ids, same order, same size),
so a worker computes the same batches as one process would: the tables are the same. A worker that
dies loses the chunk it was computing; the other workers compute the rest, the driver commits them and
then fails with one line, and the rerun computes only the lost chunk. A staged part that a killed driver
never committed is complete (it was renamed into place) and is committed by the next run.

Resources: a local Ray instance by default (every core of this machine); ``ray_address`` joins a
cluster. On a cluster with GPUs each worker takes ``gpus_per_worker`` GPUs (default: one each while
there are enough, else an equal fraction); on CPU each worker takes its share of the cores and runs
torch with that many threads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

#: The one line printed when --workers is asked for without Ray.
RAY_MISSING = "--workers needs Ray: pip install 'curate[ray]'"
#: Test hook: the first worker dies (os._exit) when it starts its chunk number N+1 (kill/resume tests).
KILL_WORKER_ENV = "CURATE_SCORE_KILL_WORKER_AFTER_CHUNKS"


class ParallelError(RuntimeError):
    """Data-parallel scoring could not run or did not finish (the message says what to do)."""


@dataclass(frozen=True)
class Parallel:
    """How the model work of a scoring run is spread: ``workers`` Ray actors at ``ray_address``."""

    workers: int = 1
    ray_address: str | None = None
    gpus_per_worker: float | None = None  # None: 1 each while there are enough GPUs, else a fair fraction


#: Seconds of the last ``map_chunks``: actors started and models loaded (``ready_s``), chunks computed
#: and committed (``work_s``); benchmarks/scale/score_workers.py reads it.
LAST_TIMING: dict[str, float] = {}

_ACTIVE: ContextVar[Parallel | None] = ContextVar("curate_scoring_parallel", default=None)
_STARTED: list[str] = []  # the temp folder of the Ray instance ``map_chunks`` started, while it is up


def require_ray():
    """The ray module, or a ParallelError with the one line naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ParallelError(RAY_MISSING) from exc
    return ray


@contextlib.contextmanager
def workers(
    n: int = 1, ray_address: str | None = None, gpus_per_worker: float | None = None
) -> Iterator[Parallel | None]:
    """Within this block, scorers compute their uncached chunks on ``n`` Ray workers (n=1: in-process)."""
    if n < 1:
        raise ParallelError(f"--workers {n}: must be 1 or more")
    if gpus_per_worker is not None and gpus_per_worker <= 0:
        raise ParallelError(f"gpus_per_worker {gpus_per_worker}: must be > 0")
    cfg = Parallel(n, ray_address, gpus_per_worker) if n > 1 or ray_address else None
    if cfg is not None:
        require_ray()
    token = _ACTIVE.set(cfg)
    try:
        yield cfg
    finally:
        _ACTIVE.reset(token)
        if _STARTED and _ACTIVE.get() is None:  # the Ray instance this block started: one per block
            import ray

            ray.shutdown()
            for temp in filter(None, _STARTED):
                shutil.rmtree(temp, ignore_errors=True)
            _STARTED.clear()


def active() -> Parallel | None:
    """The parallel settings of the current block (None: compute in-process)."""
    return _ACTIVE.get()


# ------------------------------------------------------------------ chunks
def chunk_table(ids: Sequence[str], values: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """``id`` + the value columns of ``schema`` cast to their types; one row per id."""
    if values.num_rows != len(ids):
        raise RuntimeError(f"{what}: compute returned {values.num_rows} rows for {len(ids)} ids")
    return pa.table(
        {"id": pa.array(list(ids), pa.string())}
        | {n: values.column(n).cast(schema.field(n).type) for n in schema.names if n != "id"}
    )


def staged_parts(cache_folder: Path) -> list[Path]:
    """Staged chunk files that workers finished but no driver committed yet."""
    d = cache_folder / "incoming"
    return sorted(d.glob("part-*.parquet")) if d.is_dir() else []


class _ChunkWorker:
    """A Ray actor: builds the task once, then computes and stages one chunk per call."""

    def __init__(self, task: Any, threads: int | None, kill_after: int | None) -> None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.task = task
        self.kill_after = kill_after
        self.done = 0

    def ready(self) -> bool:
        self.task.setup()
        return True

    def run(self, ids: list[str], items: list, schema: pa.Schema, folder: str, what: str) -> tuple[str, int]:
        import xxhash

        from curation.core.store import write_parquet_atomic

        if self.kill_after is not None and self.done >= self.kill_after:
            os._exit(1)  # the test hook: die like a killed worker, mid-run
        table = chunk_table(ids, self.task(items), schema, what)
        path = (
            Path(folder) / "incoming" / f"part-{xxhash.xxh3_64_hexdigest(chr(0).join(ids).encode())}.parquet"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, path)
        self.done += 1
        return str(path), len(ids)


def _start_ray(cfg: Parallel):
    """Joins ``ray_address`` or an instance already up, else starts a local one (shut down when the
    ``workers`` block ends, so the several caches of one scorer share it)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    env = {k: os.environ[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}
    temp = ""
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, runtime_env={"env_vars": env} if env else None, log_to_driver=False)
    else:  # a local instance for this run only: no auth token written under ~/.ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _temp_dir=temp,
            log_to_driver=False,
            runtime_env={"env_vars": env} if env else None,
        )
    _STARTED.append(temp)
    return ray


def _resources(ray, cfg: Parallel, n: int) -> tuple[dict[str, float], int]:
    """(Ray actor options, torch threads) of one of ``n`` workers."""
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    cpus = int(res.get("CPU", 1))
    if gpus > 0:
        share = cfg.gpus_per_worker or (1.0 if gpus >= n else gpus / n)
        return {"num_gpus": share, "num_cpus": 1}, max(1, cpus // n)
    threads = max(1, cpus // n)
    return {"num_cpus": threads}, threads


def map_chunks(
    cfg: Parallel,
    task: Any,
    chunks: Sequence[tuple[list[str], list]],
    schema: pa.Schema,
    folder: Path,
    commit: Callable[[Path], None],
    what: str,
) -> None:
    """Compute ``chunks`` ((ids, items) each) on ``cfg.workers`` actors; ``commit(part)`` each staged part.

    At most one chunk per worker is in flight. When a worker dies, the others compute the remaining chunks;
    then a ParallelError says to run again, and the rerun computes only the chunk the dead worker had in
    flight. An exception in the task itself stops the dispatch (it would fail every chunk alike).
    """
    ray = _start_ray(cfg)
    t0 = time.perf_counter()
    n = min(cfg.workers, len(chunks))
    actors: list = []
    try:
        options, threads = _resources(ray, cfg, n)
        kill_after = int(os.environ[KILL_WORKER_ENV]) if os.environ.get(KILL_WORKER_ENV) else None
        actor_cls = ray.remote(max_restarts=0, **options)(_ChunkWorker)
        task_ref = ray.put(task)
        actors = [actor_cls.remote(task_ref, threads, kill_after if rank == 0 else None) for rank in range(n)]
        ray.get([a.ready.remote() for a in actors])
        LAST_TIMING.clear()
        LAST_TIMING["ready_s"] = time.perf_counter() - t0
        schema_ref = ray.put(schema)
        queue, idle, pending = deque(range(len(chunks))), list(actors), {}
        failure: BaseException | None = None
        failed = 0  # chunks whose worker died or raised
        stop = False  # an error in the task itself (not a death): every chunk would fail alike
        while pending or (queue and idle and not stop):
            while queue and idle and not stop:
                actor, c = idle.pop(0), queue.popleft()
                ids, items = chunks[c]
                pending[actor.run.remote(ids, items, schema_ref, str(folder), what)] = actor
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                actor = pending.pop(ref)
                try:
                    part, _ = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the worker died: the others go on
                    failure, failed = failure or exc, failed + 1
                    continue
                except ray.exceptions.RayTaskError as exc:
                    failure, failed, stop = failure or exc, failed + 1, True
                    continue
                commit(Path(part))
                idle.append(actor)
        LAST_TIMING["work_s"] = time.perf_counter() - t0 - LAST_TIMING["ready_s"]
        if failure is not None:
            left = len(queue) + failed
            cause = (
                getattr(failure, "cause", None) or failure
            )  # a RayTaskError carries the worker's exception
            why = (str(cause).strip().splitlines() or [type(cause).__name__])[-1][:300]
            raise ParallelError(
                f"{what}: a Ray worker failed ({type(cause).__name__}: {why}); the chunks the workers finished "
                f"are committed, {left} chunk(s) are not. Run the command again: it computes only those."
            ) from failure
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
