"""Prefect flows: ingest, score, build (+ report), train, and the end-to-end pipeline.

The flows are thin glue over plain functions (curation.ingest, curation.ingest.dedup,
curation.scoring, curation.builds.build, curation.builds.report, training): they expand the
inputs, call one coarse task per file / kind / scorer / build, and publish
counts and the report link as Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_table_artifact
from prefect.futures import wait

from curation import catalog
from curation.core.store import Store
from curation.ingest.pipeline import earlier_versions_note
from flows import tasks
from flows.caching import result_storage


def _bound(task_, store: Store):
    """The task with its results (and cache records) persisted inside ``store``."""
    return task_.with_options(result_storage=result_storage(store))


def _call(task_, steps: list[dict[str, str]], label: str, *args: Any) -> Any:
    """Run a task inline, record its final state name ("Completed", "Cached", ...) under ``label``."""
    state = task_(*args, return_state=True)
    steps.append({"task": label, "state": state.name})
    return state.result()


# ------------------------------------------------------------------- ingest
#: An input: a file, glob or folder, or {"path": ..., **IngestOptions fields} for per-input reader options.
Input = str | dict[str, Any]
INGEST_OPTION_FIELDS = ("reader", "format", "source", "kind", "mapping", "label_values", "max_chars")


class IngestFailed(RuntimeError):
    """Some input files could not be ingested (the others were, and stay committed)."""


def expand_inputs(inputs: list[Input], defaults: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(file, ingest options) for every file named by ``inputs``; unknown option names are refused."""
    from curation.ingest.sources import expand_paths

    out = []
    for item in inputs:
        spec = {"path": item} if isinstance(item, str) else dict(item)
        path = spec.pop("path", None)
        unknown = sorted(set(spec) - set(INGEST_OPTION_FIELDS))
        if not path or unknown:
            raise ValueError(
                f"input {item!r}: needs 'path' and only {', '.join(INGEST_OPTION_FIELDS)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        options = {k: v for k, v in (defaults | spec).items() if v is not None}
        out.extend((str(f), options) for f in expand_paths([path]))
    return out


@flow(name="curate-ingest", log_prints=True)
def ingest_flow(
    store: str,
    inputs: list[Input],
    reader: str = "auto",
    format: str = "auto",
    source: str | None = None,
    near_threshold: float = 0.8,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Ingest files, globs or folders (one cached task per file), then recompute near-duplicates per kind.

    A file that cannot be read does not stop the others: they are ingested and
    deduplicated, then the flow fails naming every file that was not. With ``workers`` > 1 or a
    ``ray_address``, one task ingests every file on Ray (curation.ingest.parallel: the same store).
    """
    st = Store(store)
    files = expand_inputs(inputs, {"reader": reader, "format": format, "source": source})
    steps: list[dict[str, str]] = []
    rows, errors = [], []
    if workers > 1 or ray_address:
        state = tasks.ingest_files_on_ray(str(st.root), files, workers, ray_address, return_state=True)
        steps.append({"task": "ingest on Ray", "state": state.name})
        for r in state.result():
            if r["error"]:
                errors.append(f"{r['source_file']}: {r['error']}")
            else:
                rows.append(r)
    # one task at a time: the store's writer lock serialises writers anyway
    ingest = _bound(tasks.ingest_file, st)
    for path, options in [] if workers > 1 or ray_address else files:
        state = ingest(str(st.root), path, options, return_state=True)
        steps.append({"task": f"ingest {Path(path).name}", "state": state.name})
        if state.is_completed():
            rows.append(state.result())
        else:
            errors.append(f"{path}: {state.message}")
    for r in rows:
        if r["earlier_units"]:
            print("warning: " + earlier_versions_note(r["source_file"], r["earlier_units"]))
    dedup = _bound(tasks.near_dedup, st)
    kinds = sorted({r["kind"] for r in rows})
    near_rows = [_call(dedup, steps, f"near-dedup {k}", str(st.root), k, near_threshold) for k in kinds]
    catalog.refresh(st)
    if rows:
        create_table_artifact(
            key="ingest-counts",
            table=[
                {
                    k: r[k]
                    for k in (
                        "source",
                        "kind",
                        "reader",
                        "rows_read",
                        "accepted",
                        "quarantined",
                        "duplicates",
                    )
                }
                for r in rows
            ],
            description=f"Ingest into {st.root}: rows per input file",
        )
    if errors:
        raise IngestFailed(f"{len(errors)} of {len(files)} file(s) not ingested:\n" + "\n".join(errors))
    return {
        "files": rows,
        "near_duplicates": {r["kind"]: r["near_duplicates"] for r in near_rows},
        "steps": steps,
    }


# ------------------------------------------------------------------- scoring
def default_scorers() -> dict[str, dict[str, Any]]:
    """Every result scorer of curation.scoring, with its default parameters."""
    from curation import scoring

    return {name: {} for name in scoring.RESULT_SCORERS}


@flow(name="curate-score", log_prints=True)
def score_flow(
    store: str,
    scorers: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run scorers, each a cached task keyed on its code, model fingerprint, params and the data it reads.

    ``workers`` > 1 (or ``ray_address``): each scorer computes its uncached per-record model work on that
    many Ray workers (`curate score --workers`, curation/scoring/parallel.py); the tables are the same.

    Scorers run one after the other, in the given order (later scorers may read
    earlier results, and each holds the store's writer lock while it writes),
    but each is a submitted task, so with prefect-ray's RayTaskRunner
    (flows/ray.py) the model work runs on the Ray cluster's workers.
    """
    st = Store(store)
    scorers = default_scorers() if scorers is None else scorers
    score = _bound(tasks.score, st)
    futures, previous = {}, []
    for name, params in scorers.items():
        futures[name] = score.submit(
            str(st.root), name, params, list(tasks.KINDS), workers, ray_address, wait_for=previous
        )
        previous = [futures[name]]
    wait(list(futures.values()))
    results = {name: f.result() for name, f in futures.items()}
    steps = [{"task": f"score {name}", "state": f.state.name} for name, f in futures.items()]
    catalog.refresh(st)
    return {"scorers": results, "steps": steps}


# --------------------------------------------------------------------- build
@flow(name="curate-build", log_prints=True)
def build_flow(
    store: str, policy: str, name: str = "default", report_out: str | None = None
) -> dict[str, Any]:
    """Build shards from a policy file (cached on the policy's hash and the active scores), then the report."""
    from curation.builds.policy import resolve_policy

    st = Store(store)
    policy = str(resolve_policy(str(policy)).absolute())
    steps: list[dict[str, str]] = []
    built = _call(_bound(tasks.build, st), steps, f"build {name}", str(st.root), policy, name)
    out: dict[str, Any] = {"build": built, "steps": steps}
    target = report_out or str(st.root / "reports" / f"{name}.html")
    rep = _call(_bound(tasks.report, st), steps, f"report {name}", str(st.root), name, target)
    out["report"] = rep["report"]
    create_link_artifact(
        key=f"report-{name}".lower().replace("_", "-"),
        link=Path(rep["report"]).as_uri(),
        description=f"Curation report of build {name!r}",
    )
    return out


# --------------------------------------------------------------------- train
@flow(name="curate-train", log_prints=True)
def train_flow(store: str, name: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on a build's shards (cached on the manifest, the config, the base model's fingerprint and the code).

    ``config``: ``{"trainer": "rm" | "sft" | "rescue", "model": PATH, ...}`` (fields of the trainer's config).
    """
    st = Store(store)
    steps: list[dict[str, str]] = []
    result = _call(_bound(tasks.train, st), steps, f"train {name}", str(st.root), name, config or {})
    return {"train": result, "steps": steps}


# ------------------------------------------------------------------ pipeline
@flow(name="curate-pipeline", log_prints=True)
def pipeline_flow(
    store: str,
    inputs: list[Input],
    scorers: dict[str, dict[str, Any]] | None = None,
    policy: str | None = None,
    name: str = "default",
    report_out: str | None = None,
    train: dict[str, Any] | None = None,
    near_threshold: float = 0.8,
) -> dict[str, Any]:
    """Ingest -> score -> build + report -> (optionally) train, end to end."""
    out: dict[str, Any] = {"store": str(Store(store).root)}
    out["ingest"] = ingest_flow(store, inputs, near_threshold=near_threshold)
    out["score"] = score_flow(store, scorers)
    if policy:
        out["build"] = build_flow(store, policy, name, report_out)
    if train is not None and out.get("build"):
        out["train"] = train_flow(store, name, train)
    out["steps"] = [s for part in out.values() if isinstance(part, dict) for s in part.get("steps", [])]
    return out


@flow(name="curate-landing", log_prints=True)
def landing_flow(
    store: str,
    landing: str,
    scorers: dict[str, dict[str, Any]] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Scheduled: ingest every new file of a landing folder and score it (unchanged files are cache hits)."""
    folder = Path(landing)
    if not folder.is_dir() or not any(folder.iterdir()):
        get_run_logger().info("landing folder %s is missing or empty; nothing to do", landing)
        return {}
    ingested = ingest_flow(store, [landing])  # first: the scorers read what it ingests
    return {"ingest": ingested, "score": score_flow(store, scorers, workers=workers, ray_address=ray_address)}
