"""Parallel ingest on Ray: one task per input file, committed in input order by the driver.

``ingest_parallel`` gives the store the serial ``ingest_paths`` gives (same units, ids, duplicates,
quarantine and accounting), with the files read, converted, validated and deduplicated on Ray workers:

- The driver takes the writer lock for the whole run (so the store cannot change under the workers),
  then starts one Ray task per file (at most ``workers`` running at once). A task runs the serial
  per-file code (``pipeline.ingest_file``) against the store as committed when the run began, and
  leaves its unit in ``.staging`` instead of committing it.
- The driver commits the staged units in input file order. Before committing one it checks its
  accepted records against those the earlier units of this run accepted (the only ids a worker could
  not see): each one found is moved from the records to the duplicates, and the unit's accounting
  (``run.parquet``) is updated, as the serial run would have counted it. A unit already committed by
  an earlier file of the run (same bytes, reader and source) is dropped and reported as skipped.
- A file that cannot be read is reported by name (``UnitResult.error``) and the others are committed;
  an error writing the store stops the run saying which files were committed, as in the serial path.
  A killed run leaves only ``.staging`` folders, which the next writer clears; nothing looks committed.

Ray is an optional extra: without it ``RayMissing`` says which one to install. The store must be on a
filesystem every Ray node sees (any local path for a local Ray instance).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.core.errors import StoreError, io_error
from curation.core.store import Store
from curation.ingest.columnar import IdSet, digests_from_hex
from curation.ingest.pipeline import (
    IngestOptions,
    UnitResult,
    committed_so_far,
    failed_result,
    ingest_file,
    mark_earlier_versions,
    skipped_result,
    write_options,
)
from curation.ingest.readers import DetectError
from curation.ingest.sources import SourceError, expand_paths
from curation.ingest.validate import Validator, prefetch_gx
from schemas import DUPLICATE_SCHEMA, INGEST_RUN_SCHEMA, SCHEMAS

RAY_EXTRA = "pip install 'curate[ray]'"


class RayMissing(RuntimeError):
    """``--workers``/``--ray-address`` were asked for and Ray cannot be imported."""


def import_ray() -> Any:
    """The ``ray`` module, or RayMissing naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise RayMissing(f"parallel ingest (--workers, --ray-address) needs Ray: {RAY_EXTRA}") from exc
    return ray


@dataclass
class Staged:
    """What a worker hands back for one file: its accounting and staged unit folder, or its error."""

    res: UnitResult | None = None
    staged: str | None = None  # None when the file was skipped (already committed) or failed
    error: BaseException | None = None


#: Validators of this worker process, by max_chars then kind (a Great Expectations suite takes seconds).
_VALIDATORS: dict[int, dict[str, Validator]] = {}


def stage_file(root: str, path: str, opts: IngestOptions, run_id: str) -> Staged:
    """Worker side: ingest one file into a staged unit of the store at ``root``, without committing it.

    Never takes the writer lock: the driver holds it for the whole run."""
    staged: list[Path] = []
    try:
        prefetch_gx()
        store = Store(root, create=False)
        validators = _VALIDATORS.setdefault(opts.max_chars, {})
        res = ingest_file(
            store, Path(path), opts, run_id, {}, validators, commit=lambda d, _r: staged.append(d)
        )
    except Exception as exc:  # reported to the driver, which handles it in input order as the serial run
        return Staged(error=exc)
    return Staged(res=res, staged=str(staged[0]) if staged else None)


def ingest_parallel(
    store: Store,
    paths: list[str],
    opts: IngestOptions | None = None,
    workers: int = 2,
    address: str | None = None,
    progress: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """``ingest_paths`` with the files ingested by Ray tasks, ``workers`` at a time.

    ``address=None`` starts a local Ray instance of ``workers`` CPUs (and stops it at the end);
    ``"auto"`` or ``"ray://head:10001"`` joins a running cluster. An instance already started in this
    process (``ray.init``) is used as it is."""
    opts = opts or IngestOptions()
    return ingest_files_parallel(store, [(f, opts) for f in expand_paths(paths)], workers, address, progress)


def ingest_files_parallel(
    store: Store,
    items: list[tuple[Path, IngestOptions]],
    workers: int = 2,
    address: str | None = None,
    progress: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """``ingest_parallel`` of (file, its options) pairs, committed in this order."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    ray = import_ray()
    files = [Path(f) for f, _ in items]
    results: list[UnitResult] = []
    if not files:
        return results
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with store.writer_lock("ingest"), _ray_session(ray, workers, address):
        task = ray.remote(num_cpus=1, max_retries=0)(stage_file)
        index: dict[Any, int] = {}  # running task -> its file's position
        done: dict[int, Staged] = {}
        run_ids: dict[str, IdSet] = {}  # per kind, the ids accepted by the units this run committed

        def submit() -> None:
            while len(index) + len(done) + len(results) < len(files) and len(index) < workers:
                i = len(index) + len(done) + len(results)
                index[task.remote(str(store.root), str(files[i]), items[i][1], run_id)] = i

        try:
            for i, path in enumerate(files):
                submit()
                while i not in done:
                    ready, _ = ray.wait(list(index), num_returns=1)
                    for ref in ready:
                        j = index.pop(ref)
                        done[j] = _collect(ray, ref, files[j])
                    submit()
                res = _commit_staged(store, path, items[i][1], done.pop(i), results, run_ids)
                results.append(res)
                if progress:
                    progress(res)
        finally:  # stopped early: the files not committed leave nothing behind
            for ref in index:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            for st in done.values():
                if st.staged:
                    shutil.rmtree(st.staged, ignore_errors=True)
        mark_earlier_versions(store, results)
    return results


def _collect(ray: Any, ref: Any, path: Path) -> Staged:
    """A finished task's result; a worker that died (killed, out of memory) stops the run as a store error
    does (the files before it stay committed), in one line naming the file."""
    try:
        return ray.get(ref)
    except Exception as exc:  # ray.exceptions.RayError and its kin: the task never returned
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return Staged(error=StoreError(f"the Ray worker ingesting {path} failed: {why}"))


@contextlib.contextmanager
def _ray_session(ray: Any, workers: int, address: str | None):
    """A Ray instance for the run: the one already initialised, the cluster at ``address``, or a local
    one of ``workers`` CPUs (its session files under a short /tmp folder: Ray's socket paths must stay
    under 107 bytes), shut down at the end if started here."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = None
    if address is None:
        tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        kwargs: dict[str, Any] = {"num_cpus": workers, "include_dashboard": False, "_temp_dir": tmp}
    else:
        kwargs = {"address": address}
    # the workers run the package of this process (a checkout on PYTHONPATH included)
    ray.init(log_to_driver=False, configure_logging=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _commit_staged(
    store: Store,
    path: Path,
    opts: IngestOptions,
    st: Staged,
    results: list[UnitResult],
    run_ids: dict[str, IdSet],
) -> UnitResult:
    """Driver side: commit one worker's unit (or report its error) as the serial run would have."""
    if st.error is not None:
        exc = st.error
        if isinstance(exc, SourceError | DetectError):  # this file only: the others go on
            return failed_result(path, opts, exc)
        if isinstance(exc, OSError):
            raise io_error(exc, f"ingesting {path}", committed_so_far(results, path)) from exc
        if isinstance(exc, StoreError):
            raise StoreError(f"{exc} ({committed_so_far(results, path)})") from exc
        raise exc
    res = st.res
    assert res is not None
    if st.staged is None:  # skipped by the worker: committed by an earlier run
        return res
    staged = Path(st.staged)
    try:
        if store.path("ingest", res.unit).exists():  # committed by an earlier file of this run
            shutil.rmtree(staged, ignore_errors=True)
            return skipped_result(store, res)
        ids = run_ids.setdefault(res.kind, IdSet())
        accepted = _recheck_duplicates(staged, res, ids)
        store.commit_dir(staged, f"ingest/{res.unit}")
        ids.add(accepted)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise io_error(exc, f"committing {path}", committed_so_far(results, path)) from exc
    except StoreError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc.__cause__, OSError):
            raise io_error(exc.__cause__, f"committing {path}", committed_so_far(results, path)) from exc
        raise StoreError(f"{exc} ({committed_so_far(results, path)})") from exc
    return res


def _recheck_duplicates(staged: Path, res: UnitResult, earlier: IdSet) -> np.ndarray:
    """Move the staged unit's accepted records that ``earlier`` (the ids accepted by the units this run
    committed before it, which its worker could not see) holds to its duplicates, and update its
    accounting. Returns the digests of the records it keeps."""
    kind = res.kind
    records_file = staged / f"{kind}.parquet"
    if not records_file.exists():
        return np.array([], dtype="S16")
    records = pq.read_table(records_file)
    digests = digests_from_hex(records.column("id"))
    hit = earlier.contains(digests)
    if not hit.any():
        return digests
    mask = pa.array(hit)
    moved = records.filter(mask)
    kept = records.filter(pc.invert(mask))
    moved_dups = pa.table(
        {
            "id": moved.column("id"),
            "kind": pa.array([kind] * moved.num_rows, pa.string()),
            "source": moved.column("source"),
            "source_file": moved.column("source_file"),
            "source_row": moved.column("source_row"),
            "ingest_run": moved.column("ingest_run"),
        }
    ).cast(DUPLICATE_SCHEMA)
    dups_file = staged / "duplicates.parquet"
    dups = [pq.read_table(dups_file)] if dups_file.exists() else []
    # the serial run writes duplicates in record order (by source row; a stable sort keeps ties in place)
    all_dups = pa.concat_tables([*dups, moved_dups]).sort_by([("source_row", "ascending")])
    pq.write_table(all_dups, dups_file, **write_options(DUPLICATE_SCHEMA))
    if kept.num_rows:
        pq.write_table(kept.cast(SCHEMAS[kind]), records_file, **write_options(SCHEMAS[kind]))  # type: ignore[index]
    else:  # the serial run writes no records file for a unit without accepted records
        records_file.unlink()
    res.accepted -= moved.num_rows
    res.duplicates += moved.num_rows
    run = pq.read_table(staged / "run.parquet").to_pylist()
    run[0] |= {"accepted": res.accepted, "duplicates": res.duplicates}
    pq.write_table(pa.Table.from_pylist(run, schema=INGEST_RUN_SCHEMA), staged / "run.parquet")
    if not res.reconciles:  # a bug, never expected: refuse to commit numbers that do not add up
        raise StoreError(f"{res.source_file}: accounting does not reconcile after the run's dedup")
    return digests[~hit]


__all__ = ["RAY_EXTRA", "RayMissing", "import_ray", "ingest_files_parallel", "ingest_parallel", "stage_file"]
