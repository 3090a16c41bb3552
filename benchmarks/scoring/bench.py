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


def bare_forward(
    model, encoded, pad_id: int, budget: int, bf16: bool, limit: int | None = None
) -> tuple[float, np.ndarray]:
    """Seconds and scores of the model's forward alone over pre-padded token-budget batches on its device."""
    import torch

    from curation.core.padding import pad_batch
    from curation.scoring.runner import token_batches

    device = next(model.parameters()).device
    batches = []
    for idx in token_batches([len(e) for e in encoded], budget):
        # the runner's padding: widths rounded up to a multiple of 8 on CUDA
        multiple = 8 if device.type == "cuda" else 1
        ids, mask = pad_batch([encoded[i] for i in idx], pad_id, multiple, limit)
        batches.append((idx, ids.to(device), mask.to(device)))
    out = np.empty(len(encoded))
    pending = []  # one copy back at the end, as the runner does
    ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode(), ctx:
        for idx, ids, mask in batches:
            pending.append((idx, model(input_ids=ids, attention_mask=mask).logits[:, 0].float()))
        for idx, rewards in pending:
            out[idx] = rewards.cpu().numpy()
    return time.perf_counter() - t0, out


def naive_pipeline(model, tokenizer, texts: list[str], batch: int, max_length: int) -> float:
    """Seconds of ``transformers.pipeline("text-classification")`` over the texts in file order."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device=model.device)
    sync()
    t0 = time.perf_counter()
    pipe(texts, batch_size=batch, truncation=True, max_length=max_length, function_to_apply="none")
    return time.perf_counter() - t0


def precision_tolerance(fp32: np.ndarray, bf16: np.ndarray, pairs: int) -> dict:
    """How far bf16 rewards are from fp32 ones (texts: the chosen ``pairs`` first, then the rejected)."""
    from scipy.stats import spearmanr

    diff = np.abs(fp32 - bf16)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff_over_reward_std": float(diff.max() / fp32.std()),
        "spearman": float(spearmanr(fp32, bf16).statistic),
        "margin_sign_agreement": float(
            np.mean(np.sign(fp32[:pairs] - fp32[pairs:]) == np.sign(bf16[:pairs] - bf16[pairs:]))
        ),
    }


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    import torch

    from curation.core.models import ModelSpec, bf16_supported, bundled_minilm_path
    from curation.core.padding import pad_batch
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring import run_scorer
    from curation.scoring.runner import RewardModel, RunnerConfig
    from curation.scoring.texts import load_records, render

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
    bare_s, bare_scores = bare_forward(
        rm.model, encoded, rm.tokenizer.pad_token_id, args.token_budget, rm.bf16
    )
    res["bare"] = {"seconds": round(bare_s, 2), "pairs_per_s": n / bare_s, "tokens_per_s": tokens / bare_s}
    other_s, other_scores = bare_forward(
        rm.model, encoded, rm.tokenizer.pad_token_id, args.token_budget, not rm.bf16
    )  # the other precision, for the speed and tolerance comparison
    res["bare_bf16" if not rm.bf16 else "bare_fp32"] = {
        "seconds": round(other_s, 2),
        "pairs_per_s": n / other_s,
    }
    fp32_scores, bf16_scores = (bare_scores, other_scores) if not rm.bf16 else (other_scores, bare_scores)
    res["bf16_vs_fp32"] = precision_tolerance(fp32_scores, bf16_scores, n)

    # 3. naive peer: transformers.pipeline, fixed batch size, texts in file order
    naive_s = naive_pipeline(rm.model, rm.tokenizer, texts, args.pipeline_batch, args.max_length)
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
