"""Coarse Prefect tasks: each wraps one plain function of the library and passes only paths and small dicts.

Every task caches on content (see flows/caching.py) and persists its result in
the store, so re-running an unchanged pipeline does no work and a changed input
redoes only the tasks that read it. Transient failures (the store's writer
lock held by another process, I/O errors, an HTTP judge endpoint timing out or
answering 429/5xx) are retried with exponential backoff; bad data is not.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from curation import catalog
from curation.core.errors import StoreLocked
from curation.core.store import Store
from flows.caching import content_cache, digest, file_digest, kind_data_key

RETRIES = 3
BACKOFF = exponential_backoff(backoff_factor=5)  # 5, 10, 20 s (with Prefect's jitter)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: contention, I/O hiccups, or a remote endpoint that may answer next time."""
    if isinstance(exc, StoreLocked | TimeoutError | ConnectionError):
        return True
    import httpx

    from curation.scoring.chat_client import JudgeError

    if isinstance(exc, JudgeError):  # an endpoint that ran out of its own retries may answer later
        return exc.transient
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return False


def _retry_if_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # the failed state re-raises the task's exception
        return is_transient(exc)
    return False


def _task(key_fn, **overrides):
    options: dict[str, Any] = {
        "cache_policy": content_cache(key_fn),
        "persist_result": True,
        "retries": RETRIES,
        "retry_delay_seconds": BACKOFF,
        "retry_condition_fn": _retry_if_transient,
    }
    return task(**(options | overrides))


# ------------------------------------------------------------------- ingest
def ingest_key(store_root: str, path: str, options: dict[str, Any]) -> str:
    from schemas import SCHEMA_VERSION

    return digest("ingest", store_root, file_digest(path), options, SCHEMA_VERSION)


@_task(ingest_key, task_run_name="ingest {path}")
def ingest_file(store_root: str, path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Ingest one file (curation.ingest.pipeline.ingest_paths); returns its accounting row."""
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    store = Store(store_root)
    [res] = ingest_paths(store, [path], IngestOptions(**options))
    if res.error:
        raise ValueError(res.error)
    return asdict(res)


@task(
    task_run_name="ingest {store_root} on Ray",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_condition_fn=_retry_if_transient,
)
def ingest_files_on_ray(
    store_root: str, files: list[tuple[str, dict[str, Any]]], workers: int, address: str | None
) -> list[dict[str, Any]]:
    """Ingest (file, options) pairs on Ray (curation.ingest.parallel), one Ray task per file, committed in
    this order; returns every file's accounting row (``error`` set for a file that could not be read).
    Not cached: the files already committed are skipped by the ingest itself."""
    from curation.ingest.parallel import ingest_files_parallel
    from curation.ingest.pipeline import IngestOptions

    items = [(Path(f), IngestOptions(**options)) for f, options in files]
    return [asdict(r) for r in ingest_files_parallel(Store(store_root), items, workers, address)]


# ---------------------------------------------------------------- near-dedup
def near_dedup_key(store_root: str, kind: str, threshold: float) -> str:
    return digest("near-dedup", store_root, kind, threshold, kind_data_key(Store(store_root), kind))


@_task(near_dedup_key, task_run_name="near-dedup {kind}")
def near_dedup(store_root: str, kind: str, threshold: float) -> dict[str, Any]:
    """Recompute the MinHash near-duplicate prompt clusters of one kind (curation.ingest.dedup)."""
    from curation.ingest.dedup import MinHashParams, mark_near_duplicates

    store = Store(store_root)
    with store.writer_lock(f"near-dedup {kind}"):
        counts = mark_near_duplicates(store, [kind], MinHashParams(threshold=threshold))
        catalog.refresh(store)
    return {"kind": kind, "near_duplicates": counts.get(kind, 0)}


# ------------------------------------------------------------------- scoring
def package_code_key(package: str) -> str:
    """Hash of a package's Python sources: a scorer/trainer code change invalidates its cached runs."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return "absent"
    root = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(root.rglob("*.py"))
    return digest("code", [(str(f.relative_to(root)), file_digest(f)) for f in files])


#: Parameters that name local models; their fingerprints (config + weights) join the cache key.
MODEL_PARAMS = ("model", "models", "encoder", "tokenizer")


def model_key(params: dict[str, Any]) -> dict[str, str] | None:
    """Fingerprints of the models a step's params name (defaults are covered by the code hash), or None."""
    from curation.core.models import ModelSpec, fingerprint

    names = []
    for key in MODEL_PARAMS:
        value = params.get(key)
        names.extend([value] if isinstance(value, str) else list(value or []))
    if not names:
        return None
    trust = bool(params.get("trust_remote_code", False))
    network = bool(params.get("allow_network", False))
    return {
        n: fingerprint(ModelSpec(n, trust_remote_code=trust, allow_network=network).path()) for n in names
    }


def score_key(
    store_root: str,
    scorer: str,
    params: dict[str, Any],
    kinds: list[str],
    workers: int = 1,
    ray_address: str | None = None,
) -> str:
    """Same data, code, models and params: same result (how many workers computed it does not count)."""
    store = Store(store_root)
    data = {k: kind_data_key(store, k) for k in kinds}
    return digest(
        "score", store_root, scorer, params, model_key(params), package_code_key("curation.scoring"), data
    )


@_task(score_key, task_run_name="score {scorer}")
def score(
    store_root: str,
    scorer: str,
    params: dict[str, Any],
    kinds: list[str],
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run one scorer over the records of ``kinds`` (curation.scoring.run_scorer); ``workers`` > 1 or a
    ``ray_address``: its uncached model work on Ray workers (curation/scoring/parallel.py)."""
    from curation.scoring import run_scorer

    out = run_scorer(Store(store_root), scorer, workers=workers, ray_address=ray_address, **params)
    return {"scorer": scorer, "result": _plain(out)}


# --------------------------------------------------------------------- build
def build_key(store_root: str, policy: str, name: str) -> str:
    from curation.scoring import versions

    store = Store(store_root)
    data = {k: kind_data_key(store, k) for k in KINDS}
    scores = {n: v.get("key") for n, v in sorted(versions(store).items())}
    near = [file_digest(p) for p in store.files("dedup/near_*.parquet")]
    return digest(
        "build", store_root, file_digest(policy), name, data, scores, near, package_code_key("curation")
    )


@_task(build_key, task_run_name="build {name}")
def build(store_root: str, policy: str, name: str) -> dict[str, Any]:
    """Apply a policy file to the scored views and write shards + manifest (curation.builds.build.build)."""
    from curation.builds.build import build as build_shards

    out = build_shards(Store(store_root), policy, name)
    catalog.refresh(Store(store_root))
    manifest = Store(store_root).path("curated", name, "manifest.json")
    return {"name": name, "manifest": str(manifest), "result": _plain(out)}


def report_key(store_root: str, name: str, out: str) -> str:
    manifest = Store(store_root).path("curated", name, "manifest.json")
    return digest("report", store_root, name, out, file_digest(manifest), package_code_key("curation"))


@_task(report_key, task_run_name="report {name}")
def report(store_root: str, name: str, out: str) -> dict[str, Any]:
    """Render the HTML report of a build (curation.builds.report.render_report)."""
    from curation.builds.report import render_report

    render_report(Store(store_root), out, build=name)
    return {"report": str(Path(out).absolute())}


# --------------------------------------------------------------------- train
def train_key(store_root: str, name: str, config: dict[str, Any]) -> str:
    manifest = Store(store_root).path("curated", name, "manifest.json")
    return digest(
        "train",
        store_root,
        name,
        config,
        file_digest(manifest),
        model_key(config),
        package_code_key("training"),
    )


#: trainer name -> (module, config class); each module has ``train(config) -> dict`` (see training/).
TRAINERS = {
    "rm": ("training.rm", "RMConfig"),
    "sft": ("training.sft", "SFTConfig"),
    "rescue": ("training.rescue", "RescueConfig"),
}


@_task(train_key, task_run_name="train {name}", retries=0)
def train(store_root: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Train on a build's shards: ``config = {"trainer": "rm"|"sft"|"rescue", "model": ..., **config fields}``.

    ``shards`` is the build folder; ``output_dir`` defaults to ``<store>/models/<build>-<trainer>``.
    """
    import importlib

    fields = dict(config)
    trainer = fields.pop("trainer", "rm")
    if trainer not in TRAINERS:
        raise ValueError(f"train config: unknown trainer {trainer!r}; choose one of {', '.join(TRAINERS)}")
    module_name, config_class = TRAINERS[trainer]
    module = importlib.import_module(module_name)
    store = Store(store_root)
    fields.setdefault("shards", str(store.path("curated", name)))
    fields.setdefault("output_dir", str(store.path("models", f"{name}-{trainer}")))
    out = module.train(getattr(module, config_class)(**fields))
    return {"name": name, "trainer": trainer, "output_dir": fields["output_dir"], "result": _plain(out)}


KINDS = ("sft", "pair", "ranking")


def _plain(value: Any) -> Any:
    """A JSON-able view of a step's return value (dataclasses and paths included) for the persisted result."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
