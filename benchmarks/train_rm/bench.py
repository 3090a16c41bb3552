"""Reward-model training throughput: curate's RM trainer against TRL's RewardTrainer, in one run.

Same model (the bundled MiniLM as AutoModelForSequenceClassification(num_labels=1)), same HH-RLHF
harmless-base test pairs, same text (our chat rendering, tokenised once), same batch size, sequence
length, learning rate and precision (fp32). Throughput counts only pairs actually trained on: TRL
drops pairs over max_length (silently); curate left-truncates them and trains on all.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_rm/bench.py --limit 0 --threads 1

Prints a markdown table and writes results.json next to this file (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_shard(shared: Path, work: Path, limit: int) -> Path:
    """Plain HH pairs (weight 1, margin 0, no soft label) as an rm shard, all in the train split."""
    from curation.core.store import Store
    from curation.ingest.pipeline import ingest_paths
    from tests.fixtures.shards import write_shards

    store = Store(work / "store")
    ingest_paths(store, [str(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz")])
    rows = store.connect().sql("select id, source, prompt, chosen, rejected from pairs order by id")
    items = [
        {**r, "weight": 1.0, "margin": 0.0, "soft_label": 0.0, "flipped": False, "group": 0}
        for r in rows.to_arrow_table().to_pylist()
    ]
    if limit:
        items = items[:limit]
    return write_shards(work / "build", {"rm": items}, eval_every=10**12)


def shared_trainer_args(args, out: Path) -> dict:
    """The settings both trainers get, so the comparison stays like for like."""
    return {
        "output_dir": str(out),
        "max_length": args.max_length,
        "per_device_train_batch_size": args.batch,
        "learning_rate": args.lr,
        "num_train_epochs": 1,
        "logging_steps": 50,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": args.device == "cpu",
    }


def run_curate(shards: Path, model: str, args, out: Path, overlong: str = "truncate") -> dict:
    from training.rm import RMConfig, train

    cfg = RMConfig(
        shards=str(shards),
        model=model,
        eval_split="",
        bf16_autocast="true" if args.bf16 else "false",
        overlong=overlong,
        **shared_trainer_args(args, out),
    )
    r = train(cfg)
    return {
        "pairs": r["pairs_trained"],
        "seconds": r["train_seconds"],
        "truncated": r["train_length_report"]["truncated"],
        "dropped": r["train_length_report"]["dropped"],
    }


def run_trl(shards: Path, model_path: str, args, out: Path, group_by_length: bool) -> dict:
    import datasets
    from trl import RewardConfig, RewardTrainer

    from curation.core.models import ModelSpec, load_sequence_classifier, load_tokenizer
    from training.common import ensure_chat_template
    from training.shards import load_split

    tok = load_tokenizer(ModelSpec(model_path))
    tok.eos_token = tok.sep_token  # TRL needs an eos token; MiniLM has none
    ensure_chat_template(tok)
    rows = load_split(shards, "rm", "train").to_pylist()
    texts_c = [tok.apply_chat_template(r["prompt"] + r["chosen"], tokenize=False) for r in rows]
    texts_r = [tok.apply_chat_template(r["prompt"] + r["rejected"], tokenize=False) for r in rows]
    ids_c, ids_r = (
        tok(texts_c)["input_ids"],
        tok(texts_r)["input_ids"],
    )  # same tokens curate sees, untruncated
    ds = datasets.Dataset.from_dict(
        {
            "chosen_ids": ids_c,
            "rejected_ids": ids_r,
            "length": [max(len(a), len(b)) for a, b in zip(ids_c, ids_r, strict=True)],
        }
    )
    cfg = RewardConfig(
        report_to="none",
        bf16=args.bf16,
        **shared_trainer_args(args, out),
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        # keep the precomputed `length` column for the sampler (TRL's collator ignores it)
        remove_unused_columns=not group_by_length,
    )
    model = load_sequence_classifier(ModelSpec(model_path), num_labels=1)
    trainer = RewardTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    kept = len(trainer.train_dataset)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"pairs": kept, "seconds": seconds, "truncated": 0, "dropped": len(rows) - kept}


def padding_stats(shards: Path, model_path: str, args) -> dict:
    """Share of computed tokens that are real (not padding) per batching scheme, on the same pairs."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from curation.core.models import ModelSpec
    from training.common import SortedBucketSampler
    from training.rm import _tokenizer, load_pairs

    tok = _tokenizer(ModelSpec(model_path), args.max_length)
    out = {}
    for overlong in ("truncate", "drop"):
        ds, _ = load_pairs(str(shards), "train", tok, args.max_length, overlong, None)
        pair_len = [(len(x["chosen_ids"]), len(x["rejected_ids"])) for x in ds.items]
        orders = {
            "random": torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist(),
            "trl_length_grouped": list(
                LengthGroupedSampler(
                    args.batch, lengths=ds.lengths, generator=torch.Generator().manual_seed(0)
                )
            ),
            "curate_sorted_buckets": list(SortedBucketSampler(ds.lengths, args.batch, seed=0)),
        }
        for name, order in orders.items():
            real = padded = 0
            for i in range(0, len(order), args.batch):
                batch = [pair_len[j] for j in order[i : i + args.batch]]
                width = max(max(b) for b in batch)
                real += sum(a + b for a, b in batch)
                padded += 2 * len(batch) * width
            out[f"{overlong}/{name}"] = {"pairs": len(ds), "real_tokens": real, "computed_tokens": padded}
    return out


def machine(args) -> str:
    import torch

    cpu = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}"
    )
    if args.device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {cpu}"
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--limit", type=int, default=0, help="first N pairs by id (0 = all 2,312)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--only",
        default="trl_default,trl_group_by_length,curate,curate_drop",
        help="curate: truncate over-long pairs and train on all; curate_drop: drop them like TRL",
    )
    p.add_argument(
        "--shards", default=None, help="an rm shard folder to train on (default: build one from --shared)"
    )
    p.add_argument("--model", default=None, help="encoder to train (default: the bundled MiniLM)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed runs of the first trainer first (CUDA init, kernel autotuning)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision for every trainer (GPU)")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    p.add_argument(
        "--padding-only", action="store_true", help="only count real vs padded tokens, no training"
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from curation.core.models import bundled_minilm_path

    model = args.model or str(bundled_minilm_path())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shards = Path(args.shards) if args.shards else build_shard(Path(args.shared), work, args.limit)
        padding = padding_stats(shards, model, args)
        for k, v in padding.items():
            print(
                f"padding {k}: {v['pairs']} pairs, real/computed tokens {v['real_tokens'] / v['computed_tokens']:.3f}"
            )
        if args.padding_only:
            Path(args.out).write_text(
                json.dumps({"command": " ".join(["python", *sys.argv]), "padding": padding}, indent=2)
            )
            return
        names = args.only.split(",")
        for i, name in enumerate(names[:1] * args.warmup + names):
            if name.startswith("curate"):
                overlong = "drop" if name == "curate_drop" else "truncate"
                r = run_curate(shards, model, args, work / f"{name}{i}", overlong)
            else:
                r = run_trl(shards, model, args, work / f"{name}{i}", name == "trl_group_by_length")
            if i < args.warmup:
                print(f"warm-up ({name}): {r['seconds']:.1f} s, not counted", flush=True)
                continue
            results[name] = r
            r["pairs_per_second"] = r["pairs"] / r["seconds"]
            print(name, r, flush=True)
    best_trl = max((r["pairs_per_second"] for k, r in results.items() if k.startswith("trl")), default=None)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(args),
        "load": load,
        "args": vars(args),
        "padding": padding,
        "results": results,
        "speedup_vs_best_trl": results["curate"]["pairs_per_second"] / best_trl
        if best_trl and "curate" in results
        else None,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        "\n| trainer | pairs trained | dropped | truncated | seconds | pairs/s |\n|---|---|---|---|---|---|"
    )
    for k, r in results.items():
        print(
            f"| {k} | {r['pairs']} | {r['dropped']} | {r['truncated']} | {r['seconds']:.1f} | {r['pairs_per_second']:.2f} |"
        )
    if report["speedup_vs_best_trl"]:
        print(f"\ncurate / best TRL: {report['speedup_vs_best_trl']:.2f}x   ({load})")


if __name__ == "__main__":
    main()
