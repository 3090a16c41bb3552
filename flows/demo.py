"""`curate demo`: the whole pipeline on the bundled real sample data, offline, with Prefect's temporary local API.

Runs the pipeline flow (ingest -> near-dedup -> score -> build -> report) on
curation/data/demo with the bundled MiniLM, then prints a summary table, the
store and report paths and three example `curate sql` queries with their output.
Steps whose library code is not in this installation are reported as skipped.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.builds.policy import bundled_policy

DEMO_DATA = Path(__file__).resolve().parents[1] / "curation" / "data" / "demo"
DEFAULT_POLICY = bundled_policy("default")


@dataclass
class DemoResult:
    store: Path
    seconds: float
    flow: dict[str, Any]
    report: str | None = None
    skipped: list[str] = field(default_factory=list)


#: Files whose layout the readers cannot guess: their ingest options (the rest are detected).
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "gsm8k/test.jsonl": {
        "kind": "sft",
        "source": "gsm8k",
        "mapping": {"prompt": "question", "response": "answer"},
    },
}


def demo_inputs(data: Path = DEMO_DATA) -> list[str | dict[str, Any]]:
    """Every data file of the bundled demo folder (licences and notices excluded), with reader options."""
    suffixes = (".json", ".jsonl", ".gz")
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    out: list[str | dict[str, Any]] = []
    for p in files:
        opts = DEMO_OPTIONS.get(p.relative_to(data).as_posix())
        out.append({"path": str(p), **opts} if opts else str(p))
    return out


@contextlib.contextmanager
def local_prefect(quiet: bool = True) -> Iterator[None]:
    """Prefect tuned for one short local run: no flow heartbeats (saves ~1 s per flow), optional quiet logs."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def run_demo(
    store: str | Path,
    policy: str | Path | None = DEFAULT_POLICY,
    scorers: dict[str, dict[str, Any]] | None = None,
    name: str = "demo",
    quiet: bool = True,
) -> DemoResult:
    """Run the pipeline flow on the bundled data; returns what it did and how long it took."""
    started = time.perf_counter()
    with local_prefect(quiet):
        from flows.pipeline import pipeline_flow

        policy_arg = str(policy) if policy and Path(policy).is_file() else None
        out = pipeline_flow(
            store=str(store),
            inputs=demo_inputs(),
            scorers=scorers,
            policy=policy_arg,
            name=name,
        )
    skipped = []
    if policy and not Path(policy).is_file():
        skipped.append(f"build (policy file {policy} not found)")
    report = (out.get("build") or {}).get("report")
    return DemoResult(Path(out["store"]), time.perf_counter() - started, out, report, skipped)


#: Example queries printed after the demo: (what it shows, SQL, views it needs).
EXAMPLE_QUERIES = [
    (
        "the most uncertain preference pairs (smallest mean reward margin across models)",
        "SELECT source, round(margin, 3) AS margin, round(margin_std, 3) AS margin_std, quality_class, "
        "left(chosen[1].content, 60) AS chosen FROM scored_pairs WHERE margin IS NOT NULL "
        "ORDER BY abs(margin) LIMIT 5",
        "scored_pairs.margin",
    ),
    (
        "preference pairs by quality class and length bias",
        "SELECT quality_class, count(*) AS pairs, round(avg(CASE WHEN chosen_longer THEN 1 ELSE 0 END), 3) "
        "AS chosen_longer FROM scored_pairs GROUP BY ALL ORDER BY pairs DESC",
        "scored_pairs.quality_class",
    ),
    (
        "records kept per kind and source",
        "SELECT kind, source, sum(accepted) AS accepted, sum(quarantined) AS quarantined, "
        "sum(duplicates) AS duplicates FROM ingest_runs GROUP BY ALL ORDER BY kind, source",
        None,
    ),
    (
        "why rows were quarantined",
        "SELECT source, field, left(reason, 70) AS reason, count(*) AS n FROM quarantine GROUP BY ALL "
        "ORDER BY n DESC LIMIT 5",
        None,
    ),
    (
        "the largest near-duplicate prompt clusters",
        "SELECT kind, cluster[:12] AS cluster, count(*) AS members FROM near_duplicates GROUP BY ALL "
        "ORDER BY members DESC LIMIT 5",
        None,
    ),
]


def usable_queries(store, n: int = 3) -> list[tuple[str, str]]:
    """The first ``n`` example queries whose views and columns hold data in this store."""
    from curation.catalog import query

    out = []
    for what, sql, needs in EXAMPLE_QUERIES:
        if needs:
            view, column = needs.split(".")
            try:
                if not query(store, f"SELECT count({column}) AS n FROM {view}").column("n")[0].as_py():
                    continue
            except Exception:  # the view or column does not exist in this installation
                continue
        out.append((what, sql))
        if len(out) == n:
            break
    return out
