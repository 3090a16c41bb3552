"""Reward-model scoring throughput on HH-RLHF pairs: curate's scorer vs the bare limit vs a naive pipeline.

One command (from the repository root):

    .venv/bin/python benchmarks/scoring/bench.py [--pairs 300] [--model RM_FOLDER] [--max-length 256]

In one run, on the same texts (prompt + response, plain rendering, left truncation at --max-length):
- scorer: `run_scorer(store, "reward_margin", models=[RM])` end to end on an empty cache (tokenise,
  length-sort, token-budget batches, forward, write chunks, combine, commit); reported with and
  without the one-time model load;
- bare: the same model's forward over the same pre-tokenised, pre-padded token-budget batches, nothing
  else (the limit the scorer can approach);
- naive: `transformers.pipeline("text-classification")` over the texts in file order, batch 16;
- fp32 vs bf16: rewards of the bare forward in both precisions (max abs difference, relative to the
  reward spread, and Spearman).
Without --model, a MiniLM reward model with a seeded score head is saved under --work (the speed
does not depend on the head's values). Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    import torch
    from scipy.stats import spearmanr

    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.models import ModelSpec, bf16_supported, bundled_minilm_path
    from curation.scoring import run_scorer
    from curation.scoring.runner import RewardModel, RunnerConfig, pad_batch, token_batches
    from curation.scoring.texts import load_records, render
    from curation.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"))
    ap.add_argument("--pairs", type=int, default=300, help="first N pairs of the file (0 = all 2,312)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--pipeline-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="auto: bf16_supported()")
    ap.add_argument("--work", default="/tmp/curate_scoring_bench")
    ap.add_argument("--out", default=str(REPO / "benchmarks/scoring/results.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    model_dir = args.model
    if model_dir is None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        m = AutoModelForSequenceClassification.from_pretrained(str(bundled_minilm_path()), num_labels=1)
        model_dir = str(work / "rm")
        m.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(str(bundled_minilm_path())).save_pretrained(model_dir)
    with gzip.open(args.data, "rt") as fh:
        lines = fh.readlines()
    subset = work / "hh.jsonl"
    subset.write_text("".join(lines[: args.pairs] if args.pairs else lines))
    st = Store(work / "store")
    ingest_paths(st, [str(subset)], IngestOptions(reader="hh", source="hh"))
    records = load_records(st, "pair")
    n = len(records)

    # the same texts for every contender
    t = time.perf_counter()
    bf16 = {"auto": None, "on": True, "off": False}[args.bf16]
    cfg = RunnerConfig(max_length=args.max_length, token_budget=args.token_budget, bf16=bf16)
    rm = RewardModel(ModelSpec(model_dir), cfg)
    load_s = time.perf_counter() - t
    with torch.inference_mode():  # warm-up: oneDNN builds its kernels on the first call of each precision
        warm = rm.tokenize(["warm up " * 200] * 4)
        for bf in (True, False):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf):
                rm.model(*pad_batch(warm, rm.tokenizer.pad_token_id))
    texts = [render(rm.tokenizer, list(r["prompt"]) + list(r["chosen"])) for r in records]
    texts += [render(rm.tokenizer, list(r["prompt"]) + list(r["rejected"])) for r in records]
    encoded = rm.tokenize(texts)
    tokens = sum(len(e) for e in encoded)
    res: dict = {
        "pairs": n,
        "texts": len(texts),
        "tokens": tokens,
        "max_length": args.max_length,
        "bf16": rm.bf16,
        "bf16_supported": bf16_supported("cpu"),
        "torch_threads": torch.get_num_threads(),
        "model_load_s": round(load_s, 2),
    }

    # 1. the scorer, end to end on an empty cache
    t = time.perf_counter()
    s = run_scorer(
        st,
        "reward_margin",
        models=[model_dir],
        max_length=args.max_length,
        token_budget=args.token_budget,
        bf16=bf16,
        progress=False,
    )
    wall = time.perf_counter() - t
    assert s.computed == n
    res["scorer"] = {
        "seconds": round(wall, 2),
        "pairs_per_s": n / wall,
        "tokens_per_s": tokens / wall,
        "seconds_excl_model_load": round(wall - load_s, 2),
        "pairs_per_s_excl_model_load": n / (wall - load_s),
    }

    # 2. bare limit: the same forward over pre-tokenised, pre-padded token-budget batches
    def bare(bf16: bool) -> tuple[float, np.ndarray]:
        batches = []
        for idx in token_batches([len(e) for e in encoded], args.token_budget):
            ids, mask = pad_batch([encoded[i] for i in idx], rm.tokenizer.pad_token_id)
            batches.append((idx, ids, mask))
        out = np.empty(len(encoded))
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
        t0 = time.perf_counter()
        with torch.inference_mode(), ctx:
            for idx, ids, mask in batches:
                out[idx] = rm.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().numpy()
        return time.perf_counter() - t0, out

    bare_s, bare_scores = bare(rm.bf16)
    res["bare"] = {"seconds": round(bare_s, 2), "pairs_per_s": n / bare_s, "tokens_per_s": tokens / bare_s}
    if True:  # the other precision, for the speed and tolerance comparison
        fp32_s, fp32_scores = bare(not rm.bf16)
        if not rm.bf16:
            fp32_scores, bare_scores = bare_scores, fp32_scores
        diff = np.abs(fp32_scores - bare_scores)
        res["bare_bf16" if not rm.bf16 else "bare_fp32"] = {
            "seconds": round(fp32_s, 2),
            "pairs_per_s": n / fp32_s,
        }
        res["bf16_vs_fp32"] = {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_over_reward_std": float(diff.max() / fp32_scores.std()),
            "spearman": float(spearmanr(fp32_scores, bare_scores).statistic),
            "margin_sign_agreement": float(
                np.mean(
                    np.sign(fp32_scores[:n] - fp32_scores[n:]) == np.sign(bare_scores[:n] - bare_scores[n:])
                )
            ),
        }

    # 3. naive peer: transformers.pipeline, fixed batch size, texts in file order
    from transformers import pipeline

    tok = rm.tokenizer
    pipe = pipeline("text-classification", model=rm.model, tokenizer=tok, device="cpu")
    t0 = time.perf_counter()
    pipe(
        texts,
        batch_size=args.pipeline_batch,
        truncation=True,
        max_length=args.max_length,
        function_to_apply="none",
    )
    naive_s = time.perf_counter() - t0
    res["naive_pipeline"] = {
        "seconds": round(naive_s, 2),
        "pairs_per_s": n / naive_s,
        "batch_size": args.pipeline_batch,
    }
    res["ratios"] = {
        "scorer_vs_bare_excl_load": (n / (wall - load_s)) / (n / bare_s),
        "scorer_vs_bare_incl_load": (n / wall) / (n / bare_s),
        "scorer_vs_naive_excl_load": naive_s / (wall - load_s),
        "bare_vs_naive": naive_s / bare_s,
    }
    res["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    res["command"] = " ".join(["python", *sys.argv])
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
