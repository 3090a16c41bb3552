"""Data-parallel scoring: 1 vs N Ray workers on the model-bound part of a scorer (MiniLM embeddings by default).

One command (from the repository root; needs the ray extra):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale/score_workers.py [--pairs 400] [--workers 1 2]
        [--scorer embeddings|reward_margin] [--model RM_FOLDER] [--chunk 128] [--out results.json]

Real HH-RLHF harmless pairs are ingested once into --work; each worker count scores a fresh copy of that
store (empty cache) through ``cached_compute`` with the scorer's ChunkTask, exactly as ``curate score
--workers N`` does. Reported per worker count: the model-bound part (the chunks computed and committed;
for N >= 2 after the actors are up and have loaded the model, for 1 after the in-process model load),
the start-up (Ray actors + model loads), records per second, and the speed-up of the model-bound part
against 1 worker. The tables of every N are checked equal to those of 1. A local Ray instance gets
every core (``--cpus``); each worker takes cores / N torch threads.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build_store(work: Path, pairs: int):
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    data = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))  # as tests/conftest.py
    src = data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    work.mkdir(parents=True, exist_ok=True)
    subset = work / "hh.jsonl"
    with gzip.open(src, "rt") as fh, open(subset, "w") as out:
        for i, line in enumerate(fh):
            if i >= pairs:
                break
            out.write(line)
    st = Store(work / "base")
    ingest_paths(st, [str(subset)], IngestOptions(reader="hh", source="hh"))
    return st


def work_items(st, scorer: str, model: str | None, max_length: int):
    """(cache spec, ids, items, task, schema, order) of the scorer's per-record model work."""
    import pyarrow as pa

    from curation.core.models import DEFAULT_ENCODER, ModelSpec
    from curation.scoring.embeddings import Embedder, pair_response_texts
    from curation.scoring.texts import load_records, plain_render, response_text
    from schemas.ids import text_id

    records = load_records(st, "pair", None)
    if scorer == "embeddings":
        c, r = pair_response_texts(records)
        texts = c + r
        emb = Embedder(st, DEFAULT_ENCODER, device="cpu", bf16=False, progress=False)
        schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])
        return emb.cache, [text_id(t) for t in texts], texts, emb.task, schema, [len(t) for t in texts]
    from curation.scoring.cache import CacheSpec
    from curation.scoring.reward_margin import RewardTask
    from curation.scoring.runner import RunnerConfig

    spec = ModelSpec(model or DEFAULT_ENCODER)
    task = RewardTask(spec, RunnerConfig(device="auto", bf16=None, max_length=max_length))
    schema = pa.schema(
        [("id", pa.string()), ("reward_chosen", pa.float64()), ("reward_rejected", pa.float64())]
    )
    items = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]
    order = [len(plain_render(r["prompt"])) + len(response_text(r["chosen"])) for r in records]
    return (
        CacheSpec("rewards", "bench", spec.model, {}),
        [r["id"] for r in records],
        items,
        task,
        schema,
        order,
    )


def run_one(base, work: Path, n: int, args) -> dict:
    from curation.core.store import Store
    from curation.scoring import parallel
    from curation.scoring.cache import cached_compute

    root = work / f"w{n}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base.root, root)
    st = Store(root)
    spec, ids, items, task, schema, order = work_items(st, args.scorer, args.model, args.max_length)
    kw = {
        "schema": schema,
        "order": order,
        "chunk_size": args.chunk,
        "progress": False,
        "task": task,
        "items": items,
    }
    t0 = time.perf_counter()
    if n == 1:
        import torch

        torch.set_num_threads(args.cpus)
        task.setup()  # the model load, outside the model-bound part
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        with st.writer_lock("bench"):
            table, stats = cached_compute(st, spec, ids, **kw)
        work_s = time.perf_counter() - t1
    else:
        with parallel.workers(n, gpus_per_worker=args.gpus_per_worker), st.writer_lock("bench"):
            table, stats = cached_compute(st, spec, ids, **kw)
        ready, work_s = parallel.LAST_TIMING["ready_s"], parallel.LAST_TIMING["work_s"]
    return {
        "workers": n,
        "records": stats.computed,
        "chunks": stats.chunks_written,
        "startup_s": round(ready, 2),
        "model_part_s": round(work_s, 2),
        "records_per_s": round(stats.computed / work_s, 1),
        "table": table.sort_by("id"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scorer", choices=("embeddings", "reward_margin"), default="embeddings")
    ap.add_argument("--model", help="reward_margin: a reward model folder (default: MiniLM, untrained head)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--gpus-per-worker", type=float, default=None)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "curate-score-workers")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=temp, runtime_env={"env_vars": env})
    base = build_store(args.work, args.pairs)
    rows = [run_one(base, args.work, n, args) for n in args.workers]
    ray.shutdown()
    ref = rows[0]["table"]
    for r in rows:
        r["same_table_as_first"] = r.pop("table").equals(ref)
        r["speedup_model_part"] = round(rows[0]["model_part_s"] / r["model_part_s"], 2)
    load = os.getloadavg()
    out = {
        "command": " ".join(["benchmarks/scale/score_workers.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg {load[0]:.1f}",
        "scorer": args.scorer,
        "pairs": args.pairs,
        "chunk": args.chunk,
        "rows": rows,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
