"""Label-noise detection on HH-RLHF harmless: does the cross-fitted preference strength mu find flipped labels?

One command (from the repository root):

    .venv/bin/python benchmarks/noise/bench.py [--flip 0.2] [--seed 0] [--heads logistic,mlp] [--finetune]

Flips a seeded random 20 % of the pairs (swaps chosen and rejected in a copy of the file), ingests
the copy into a store under --work, runs `reward_margin --backend crossfit` (out-of-fold by prompt
hash, so no pair is scored by a model that saw it), and reports the AUROC with which -mu ranks the
flipped pairs and the precision among the 20 % lowest mu, against two baselines computed in the same
run: random scores and the length difference alone. Results go to --out (JSON) and are printed.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def precision_at(scores: np.ndarray, flipped: np.ndarray, frac: float) -> float:
    k = max(1, int(round(frac * len(scores))))
    top = np.argsort(-scores, kind="stable")[:k]
    return float(flipped[top].mean())


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring import run_scorer
    from curation.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"))
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", default="logistic,mlp")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--finetune", action="store_true", help="also fine-tune the encoder per fold (GPU)")
    ap.add_argument("--work", default="/tmp/curate_noise_bench")
    ap.add_argument("--out", default=str(REPO / "benchmarks/noise/results.json"))
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.data, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    rng = np.random.default_rng(args.seed)
    flip = rng.random(len(rows)) < args.flip
    noisy = work / f"hh_flip{args.flip}_seed{args.seed}.jsonl"
    with open(noisy, "w") as fh:
        for r, f in zip(rows, flip, strict=True):
            out = {"chosen": r["rejected"], "rejected": r["chosen"]} if f else r
            fh.write(json.dumps(out) + "\n")
    st = Store(work / "store")
    ingest_paths(st, [str(noisy)], IngestOptions(reader="hh", source="hh_noisy"))
    with contextlib.closing(st.connect()) as con:
        ids_rows = con.sql("SELECT id, source_row FROM pairs").fetchall()
    row_of = dict(ids_rows)

    results: dict = {"pairs_in_file": len(rows), "flipped_in_file": int(flip.sum()), "runs": {}}
    t0 = time.perf_counter()
    run_scorer(st, "length_bias", progress=False)
    configs = [{"head": h} for h in args.heads.split(",") if h]
    if args.finetune:
        configs.append({"finetune": True})
    for cfg in configs:
        t = time.perf_counter()
        s = run_scorer(st, "reward_margin", backend="crossfit", folds=args.folds, progress=True, **cfg)
        with contextlib.closing(st.connect()) as con:
            tab = con.sql("SELECT id, margin, len_diff FROM scored_pairs ORDER BY id").fetchall()
        ids = [r[0] for r in tab]
        mu = np.array([r[1] for r in tab], dtype=float)
        len_diff = np.array([r[2] for r in tab], dtype=float)
        y = np.array([flip[row_of[i]] for i in ids])
        name = "finetune" if cfg.get("finetune") else f"frozen-minilm+{cfg['head']}"
        results["runs"][name] = {
            "auroc": float(roc_auc_score(y, -mu)),
            "precision_at_20pct": precision_at(-mu, y, 0.2),
            "seconds": round(time.perf_counter() - t, 1),
            "cached_embeddings": s.cached,
            "computed_embeddings": s.computed,
            "n_models": s.report.get("models"),
        }
        print(name, results["runs"][name], flush=True)
    rnd = np.random.default_rng(args.seed + 1).random(len(y))
    results["baselines"] = {
        "random": {"auroc": float(roc_auc_score(y, rnd)), "precision_at_20pct": precision_at(rnd, y, 0.2)},
        "length_diff": {
            "auroc": float(roc_auc_score(y, len_diff)),
            "precision_at_20pct": precision_at(len_diff, y, 0.2),
        },
    }
    results["pairs_scored"] = len(y)
    results["flipped_scored"] = int(y.sum())
    results["seconds_total"] = round(time.perf_counter() - t0, 1)
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    results["command"] = " ".join(["python", *sys.argv])
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
