"""Parallel ingest: `curate ingest FILES --workers 1` against `--workers 2` (Ray), on the same files.

One command. It writes ``--files`` synthetic HH-RLHF-shaped preference JSONL files of ``--rows`` rows
each (turns and lengths drawn from the real hh-rlhf file, benchmarks/ingest/synth.py; one seed per
file), then, for each round and each worker count, ingests all of them into a fresh store with the CLI
in a child process (``--no-near-dedup``: near-dedup runs once after either, the same work) and records
the wall time of the whole command (Ray's start included) and the CPU time of the CLI process as
``RUSAGE_CHILDREN`` sees it (with Ray, the driver's; the Ray workers' time is not reliably in it). No per-run memory: ``ru_maxrss`` of children is the largest
of all children so far. The stores of the two modes are compared (unit names and accounting).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale/ingest_workers.py --files 4 --rows 150000 --rounds 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))

from benchmarks.ingest.synth import write_synthetic  # noqa: E402


def run_cli(files: list[Path], store: Path, workers: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "curation.cli",
        "ingest",
        *map(str, files),
        "--store",
        str(store),
        "--no-near-dedup",
    ]
    cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"RAY_AUTH_MODE": "disabled"})
    secs = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return {
        "workers": workers,
        "seconds": secs,
        "driver_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "children_max_rss_mb": after.ru_maxrss / 1024,  # largest RSS of any child so far, not this one's
    }


def accounting(store: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for unit in sorted((store / "ingest").iterdir()):
        r = pq.read_table(unit / "run.parquet").to_pylist()[0]
        rows.append(
            {"unit": unit.name} | {k: r[k] for k in ("rows_read", "accepted", "quarantined", "duplicates")}
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--rows", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "ingest_workers.json"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingw", dir=os.environ.get("TMPDIR", "/tmp")))
    runs = []
    try:
        hh = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
        files = [write_synthetic(hh, work / f"part{i}.jsonl", args.rows, seed=i) for i in range(args.files)]
        mb = sum(f.stat().st_size for f in files) / 2**20
        stores = {}
        for rnd in range(args.rounds):
            for workers in (1, 2):
                store = work / f"store_{workers}_{rnd}"
                r = run_cli(files, store, workers) | {"round": rnd}
                print(json.dumps(r), flush=True)
                runs.append(r)
                if rnd == 0:
                    stores[workers] = accounting(store)
                shutil.rmtree(store, ignore_errors=True)
        same = stores[1] == stores[2]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_at_end": os.getloadavg(),
        "input": f"{args.files} files x {args.rows:,} rows, {mb:.0f} MB",
        "same_units_and_accounting": same,
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
