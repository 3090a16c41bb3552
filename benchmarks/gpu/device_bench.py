"""The GPU benchmarks, in one process per section, on what benchmarks/gpu/prepare.py packed.

    python3 benchmarks/gpu/device_bench.py unpack  --pack .devpack
    python3 benchmarks/gpu/device_bench.py scoring --pack .devpack --out OUT_DIR
    python3 benchmarks/gpu/device_bench.py noise   --pack .devpack --out OUT_DIR

scoring: the reward-model runner the scorers use (tokenise, length-sort, token-budget batches,
forward) against the bare forward over the same pre-padded batches and a naive
``transformers.pipeline``, on all HH pairs, in bf16 autocast and fp32, plus the bf16-vs-fp32
tolerance. Not the store path (run_scorer): the GPU machine has no duckdb; on CPU the store costs
1-3 % (benchmarks/scoring/RESULTS.md).

noise: the cross-fitted, fine-tuned encoder (``reward_margin --backend crossfit --param finetune=true``,
i.e. ``finetune_rewards``) on the 20 %-flipped HH harmless pairs, for a few (epochs, lr, repeats):
AUROC of -mu for the flipped pairs and precision at 20 %, with the random and length baselines.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "scoring"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def environment() -> dict:
    import torch
    import transformers

    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_cores": __import__("os").cpu_count(),
    }


def unpack(pack: Path) -> None:
    """fp32 weights in ``minilm/`` from the fp16 copy that travelled (transformers 5 would keep fp16)."""
    from prepare import copy_model  # benchmarks/gpu/prepare.py

    copy_model(pack / "minilm-fp16", pack / "minilm", "float32")


def load_pairs(pack: Path, limit: int = 0) -> list[dict]:
    with open(pack / "hh_noisy.jsonl") as fh:
        records = [json.loads(line) for line in fh]
    return records[:limit] if limit else records


def scoring(
    pack: Path, max_length: int, budgets: list[int], pipeline_batch: int, device: str, limit: int
) -> dict:
    import torch
    from bench import bare_forward, naive_pipeline, precision_tolerance, sync  # benchmarks/scoring/bench.py
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from curation.models import ModelSpec
    from curation.scoring.runner import RewardModel, RunnerConfig
    from curation.scoring.texts import render

    torch.manual_seed(0)
    rm_dir = Path("/tmp/curate_gpu_rm")
    m = AutoModelForSequenceClassification.from_pretrained(str(pack / "minilm"), num_labels=1)
    m.save_pretrained(rm_dir)  # a reward model with a seeded head: speed does not depend on its values
    AutoTokenizer.from_pretrained(str(pack / "minilm")).save_pretrained(rm_dir)
    records = load_pairs(pack, limit)
    n = len(records)
    res: dict = {"pairs": n, "max_length": max_length, "pipeline_batch": pipeline_batch, "runs": {}}
    for budget in budgets:
        for bf16 in (True, False):
            rm = RewardModel(
                ModelSpec(str(rm_dir)),
                RunnerConfig(device=device, max_length=max_length, token_budget=budget, bf16=bf16),
            )
            texts = [render(rm.tokenizer, r["prompt"] + r["chosen"]) for r in records]
            texts += [render(rm.tokenizer, r["prompt"] + r["rejected"]) for r in records]
            rm.score(texts[:256])  # warm-up: CUDA context, kernels, allocator
            sync()
            t0 = time.perf_counter()
            runner_scores = rm.score(texts)  # what the scorer's compute() does per chunk, incl. tokenising
            sync()
            runner_s = time.perf_counter() - t0
            encoded = rm.tokenize(texts)
            tokens = sum(len(e) for e in encoded)
            bare_s, bare_scores = bare_forward(rm.model, encoded, rm.tokenizer.pad_token_id, budget, bf16)
            key = f"budget{budget}_{'bf16' if bf16 else 'fp32'}"
            res["runs"][key] = {
                "runner_s": round(runner_s, 3),
                "runner_pairs_per_s": n / runner_s,
                "runner_tokens_per_s": tokens / runner_s,
                "bare_s": round(bare_s, 3),
                "bare_pairs_per_s": n / bare_s,
                "runner_vs_bare": bare_s / runner_s,
                "tokens": tokens,
                "_scores": bare_scores,
                "_runner_scores": runner_scores,
            }
            print(key, {k: v for k, v in res["runs"][key].items() if not k.startswith("_")}, flush=True)
        naive_s = naive_pipeline(rm.model, rm.tokenizer, texts, pipeline_batch, max_length)
        res["runs"][f"budget{budget}_naive_pipeline_fp32"] = {
            "seconds": round(naive_s, 3),
            "pairs_per_s": n / naive_s,
        }
        res["runs"][f"budget{budget}_bf16"]["runner_vs_naive_fp32"] = (
            naive_s / res["runs"][f"budget{budget}_bf16"]["runner_s"]
        )
        res["runs"][f"budget{budget}_fp32"]["runner_vs_naive_fp32"] = (
            naive_s / res["runs"][f"budget{budget}_fp32"]["runner_s"]
        )
        fp32, bf16_scores = (
            res["runs"][f"budget{budget}_fp32"]["_scores"],
            res["runs"][f"budget{budget}_bf16"]["_scores"],
        )
        res[f"budget{budget}_bf16_vs_fp32"] = precision_tolerance(fp32, bf16_scores, n)
        print(
            f"budget {budget}: naive {naive_s:.2f} s; tolerance {res[f'budget{budget}_bf16_vs_fp32']}",
            flush=True,
        )
    for run in res["runs"].values():
        run.pop("_scores", None)
        run.pop("_runner_scores", None)
    return res


def noise(pack: Path, configs: list[dict], max_length: int, folds: int, device: str, limit: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from curation.models import ModelSpec, load_tokenizer
    from curation.scoring.reward_margin import finetune_rewards
    from curation.scoring.runner import RunnerConfig
    from curation.scoring.texts import plain_render, response_text
    from schemas.ids import text_id

    records = load_pairs(pack, limit)
    y = np.array([r["flipped"] for r in records])
    keys = [text_id(plain_render(r["prompt"])) for r in records]  # as reward_margin.run folds them
    spec = ModelSpec(str(pack / "minilm"))
    tok = load_tokenizer(spec)
    lc = np.array([len(tok(response_text(r["chosen"]))["input_ids"]) for r in records])
    lr_ = np.array([len(tok(response_text(r["rejected"]))["input_ids"]) for r in records])

    def metrics(score: np.ndarray) -> dict:
        k = int(round(0.2 * len(score)))
        top = np.argsort(-score, kind="stable")[:k]
        return {"auroc": float(roc_auc_score(y, score)), "precision_at_20pct": float(y[top].mean())}

    res: dict = {
        "pairs": len(records),
        "flipped": int(y.sum()),
        "folds": folds,
        "max_length": max_length,
        "baselines": {
            "random": metrics(np.random.default_rng(1).random(len(y))),
            "length_diff": metrics((lc - lr_).astype(float)),
        },
        "runs": {},
    }
    print(res["baselines"], flush=True)
    for cfg in configs:
        t0 = time.perf_counter()
        rc, rr = finetune_rewards(
            records,
            keys,
            spec,
            RunnerConfig(device=device, max_length=max_length),
            folds=folds,
            repeats=cfg["repeats"],
            epochs=cfg["epochs"],
            lr=cfg["lr"],
            batch_size=cfg.get("batch_size", 16),
            seed=0,
        )
        mu = (rc - rr).mean(1)
        name = f"ep{cfg['epochs']}_lr{cfg['lr']:g}_rep{cfg['repeats']}"
        res["runs"][name] = cfg | metrics(-mu) | {"seconds": round(time.perf_counter() - t0, 1)}
        res["runs"][name]["oof_accuracy_on_noisy_labels"] = float((mu > 0).mean())
        print(name, res["runs"][name], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["unpack", "scoring", "noise"])
    ap.add_argument("--pack", default=str(REPO / ".devpack"))
    ap.add_argument("--out", default="gpu-out")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budgets", default="8192,65536")
    ap.add_argument("--pipeline-batch", type=int, default=16)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0, help="first N pairs only (a smoke test)")
    ap.add_argument(
        "--configs",
        default="1:2e-5:1,3:3e-5:1,2:5e-5:1,3:3e-5:3",
        help="noise: comma-separated epochs:lr:repeats",
    )
    args = ap.parse_args()
    pack, out = Path(args.pack), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.section == "unpack":
        return unpack(pack)
    if args.section == "scoring":
        budgets = [int(b) for b in args.budgets.split(",")]
        res = scoring(pack, args.max_length, budgets, args.pipeline_batch, args.device, args.limit)
    else:
        configs = [
            {"epochs": int(e), "lr": float(lr), "repeats": int(r)}
            for e, lr, r in (c.split(":") for c in args.configs.split(","))
        ]
        res = noise(pack, configs, args.max_length, args.folds, args.device, args.limit)
    res["environment"] = environment()
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["python3", *sys.argv])
    (out / f"{args.section}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
