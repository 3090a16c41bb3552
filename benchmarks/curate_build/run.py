"""Benchmark `curate build` on the bundled demo data (one command; writes RESULTS.md next to this file).

    .venv/bin/python benchmarks/curate_build/run.py [--repeats 3] [--scale 1]

Ingests the demo files into a temporary store, runs the length_bias scorer, then times the
default policy's build (median of --repeats) and reports rows/s and peak RSS. --scale N
replicates the HH pairs N times with a suffix on each prompt (distinct records) to see how
the build grows with input size.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "curation" / "data" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1)
    args = ap.parse_args()

    from curation.builds.build import build
    from curation.builds.policy import bundled_policy, load_policy
    from curation.core.store import Store
    from curation.ingest.dedup import mark_near_duplicates
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring import run_scorer

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    hh = DEMO / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    inputs = [DEMO / "llama-factory", DEMO / "gsm8k" / "example_model_solutions.jsonl", DEMO / "oasst"]
    scaled = tmp / "hh-scaled.jsonl"
    with gzip.open(hh, "rt") as fh, open(scaled, "w") as out:
        rows = [json.loads(line) for line in fh]
        for k in range(args.scale):
            for r in rows:
                suffix = f" (variant {k})" if k else ""
                out.write(
                    json.dumps({"chosen": r["chosen"] + suffix, "rejected": r["rejected"] + suffix}) + "\n"
                )
    store = Store(tmp / "store")
    ingest_paths(store, [str(scaled), *map(str, inputs)], IngestOptions())
    with store.writer_lock("near-dedup"):
        mark_near_duplicates(store, ["sft", "pair", "ranking"])
    run_scorer(store, "length_bias")

    policy = load_policy(bundled_policy())
    times, res = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        res = build(store, policy)
        times.append(time.perf_counter() - t0)
    assert res is not None
    records = sum(t["records"] for t in res.manifest["accounting"]["totals"].values())
    kept = sum(s["rows"] for s in res.manifest["shards"])
    med = statistics.median(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    line = (
        f"| {args.scale} | {records} | {kept} | {med:.2f} | {records / med:,.0f} | {rss:,.0f} | "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores | {load} |"
    )
    print(line)
    results = Path(__file__).with_name("RESULTS.md")
    if not results.exists():
        results.write_text(
            "# `curate build` benchmark\n\nCommand: `.venv/bin/python benchmarks/curate_build/run.py --scale N` "
            "(default policy, demo data, length_bias scores; median of 3 builds; peak RSS of the whole "
            "process including ingest and scoring).\n\n"
            "| HH scale | input records | shard rows | build s (median) | records/s | peak RSS MB | machine | load (uptime) |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
    with open(results, "a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
