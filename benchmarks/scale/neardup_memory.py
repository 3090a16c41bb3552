"""Near-dedup memory per million prompts, and the largest input one 24 GB machine handles.

One command. For each size N it writes N Alpaca-style SFT rows whose prompts are real prompts from
../shared/data (Alpaca, GSM8K, AlpacaEval, self-instruct, HH first turns, DPO demo), perturbed: 90 %
heavily (half the words replaced by words of the real vocabulary, three appended: new prompts of the real
length distribution), 10 % lightly (one word replaced: near-duplicates of a real prompt, so clusters
form). It ingests them into a fresh store (``ingest_paths``, not measured), then in a fresh child process
runs ``mark_near_duplicates(store, ["sft"])`` (curation.ingest.dedup: prompt signatures of every record,
LSH, verified candidates, union-find, then record-level clusters) and reports its wall time and the peak
RSS it adds over the process before the call (``ru_maxrss``). A least-squares line through
(prompts, added peak) gives MB per million prompts; the 24 GB ceiling is where the line meets 24 GB less
the baseline process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale/neardup_memory.py --sizes 100000,200000,400000
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CURATE_SHARED_DATA", HERE.parents[1].parent / "shared" / "data"))

CHILD = """
import json, resource, sys, time
from curation.core.store import Store
from curation.ingest.dedup import MinHashParams, mark_near_duplicates
store = Store(sys.argv[1], create=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
counts = mark_near_duplicates(store, ["sft"], MinHashParams())
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "seconds": secs, "near": counts["sft"]}))
"""


def real_prompts(data: Path) -> list[str]:
    """Prompts of the real datasets (first human turn for HH and the DPO demo)."""
    out: list[str] = []
    llama = data / "llama-factory"
    out += [
        r["instruction"] + (" " + r["input"] if r["input"] else "")
        for r in _json(llama / "alpaca_en_demo.json")
    ]
    out += [r["conversations"][0]["value"] for r in _json(llama / "dpo_en_demo.json")]
    out += [r["instruction"] for r in _json(data / "alpaca-eval" / "gpt-3.5-turbo-1106.annotations.json")]
    out += [orjson.loads(line)["question"] for line in (data / "gsm8k" / "test.jsonl").open("rb")]
    out += [
        orjson.loads(line)["instruction"] for line in (data / "self-instruct" / "seed_tasks.jsonl").open("rb")
    ]
    with gzip.open(data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rb") as fh:
        for line in fh:
            first = orjson.loads(line)["chosen"].split("\n\nAssistant:")[0]
            out.append(first.replace("\n\nHuman:", "").strip())
    return [p for p in out if p.strip()]


def _json(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def write_rows(prompts: list[str], n: int, out: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = sorted({w for p in prompts for w in p.split()})
    with out.open("wb") as fh:
        for i in range(n):
            words = rng.choice(prompts).split()
            if rng.random() < 0.1:  # a near-duplicate of a real prompt
                words[rng.randrange(len(words))] = rng.choice(vocab)
            else:  # a new prompt of a real prompt's length
                words = [rng.choice(vocab) if rng.random() < 0.5 else w for w in words]
                words += rng.choices(vocab, k=3)
            row = {
                "instruction": " ".join(words),
                "input": "",
                "output": f"Answer {i}: " + " ".join(rng.choices(vocab, k=12)),
            }
            fh.write(orjson.dumps(row) + b"\n")


def build_store(rows: Path, store: Path) -> int:
    """Ingest ``rows`` (serially); returns the records accepted."""
    code = (
        "import sys; from curation.core.store import Store; "
        "from curation.ingest.pipeline import IngestOptions, ingest_paths; "
        "r = ingest_paths(Store(sys.argv[1]), [sys.argv[2]], IngestOptions(reader='alpaca')); print(r[0].accepted)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(store), str(rows)], capture_output=True, text=True, check=True
    )
    return int(res.stdout.strip().splitlines()[-1])


def measure(store: Path) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(store)], capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,200000,400000")
    ap.add_argument("--machine-gb", type=float, default=24.0)
    ap.add_argument("--out", default=str(HERE / "neardup_memory.json"))
    args = ap.parse_args()
    prompts = real_prompts(DATA)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="neardup", dir=os.environ.get("TMPDIR", "/tmp")))
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            src, store = work / f"rows_{n}.jsonl", work / f"store_{n}"
            write_rows(prompts, n, src)
            accepted = build_store(src, store)
            m = measure(store)
            m |= {"rows": n, "prompts": accepted, "added_mb": m["peak_mb"] - m["base_mb"]}
            print(json.dumps(m), flush=True)
            rows.append(m)
            shutil.rmtree(store, ignore_errors=True)
            src.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    xs = [r["prompts"] / 1e6 for r in rows]
    ys = [r["added_mb"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    intercept = my - slope * mx
    base = max(r["base_mb"] for r in rows)
    ceiling = (args.machine_gb * 1024 - base - intercept) / slope
    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "source_prompts": len(prompts),
        "runs": rows,
        "mb_per_million_prompts": slope,
        "intercept_mb": intercept,
        "baseline_process_mb": base,
        "ceiling_million_prompts": ceiling,
        "seconds_per_million_prompts": sum(r["seconds"] for r in rows) / sum(xs),
    }
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
