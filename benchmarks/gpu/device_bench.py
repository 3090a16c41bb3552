"""The GPU benchmarks, in one process per section, on what benchmarks/gpu/prepare.py packed.

    python3 benchmarks/gpu/device_bench.py unpack  --pack .devpack
    python3 benchmarks/gpu/device_bench.py scoring --pack .devpack --out OUT_DIR
    python3 benchmarks/gpu/device_bench.py scoring_large --pack .devpack --out OUT_DIR --budgets 65536
    python3 benchmarks/gpu/device_bench.py noise   --pack .devpack --out OUT_DIR
    python3 benchmarks/gpu/device_bench.py train_large --pack .devpack --out OUT_DIR

scoring: the reward-model runner the scorers use (tokenise, length-sort, token-budget batches,
forward) against the bare forward over the same pre-padded batches and a naive
``transformers.pipeline``, on all HH pairs, in bf16 autocast and fp32, plus the bf16-vs-fp32
tolerance. Every contender runs once untimed over all texts (warm-up: every batch shape), then the
best of ``--repeats`` timed runs is kept. Not the store path (run_scorer): the GPU machine has no
duckdb; on CPU the store costs 1-3 % (benchmarks/scoring/RESULTS.md).

scoring_large: the same for a reward model of realistic size (a 1.1B Llama-shaped classifier with
random bf16 weights, built there: no real 1B+ model fits the 64 MiB that travel), against the naive
pipeline on the same bf16 model.

noise: the cross-fitted, fine-tuned encoder (``reward_margin --backend crossfit --param finetune=true``,
i.e. ``finetune_rewards``) on the 20 %-flipped HH harmless pairs, for a few (epochs, lr, repeats):
AUROC of -mu for the flipped pairs and precision at 20 %, with the random and length baselines;
per config also the soft-label loss (``soft_label``), each repeat alone, and ``stack_with_features``
(the out-of-fold margins stacked with the dialogue-feature differences by a cross-fitted logistic head).

train_large: the bundled SFT trainer (UAL label smoothing and weights, then plain cross-entropy) and
the RESCUE trainer on a 1.1B Llama-shaped causal LM built there (fp32 weights, bf16 autocast), one
epoch over the demo build's sft and ranking shards: tokens/s, model TFLOP/s and peak GPU memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
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


def _best_of(n: int, fn):
    """(fastest seconds, its result) over n calls of fn() -> (seconds, result)."""
    runs = [fn() for _ in range(n)]
    return min(runs, key=lambda r: r[0])


def _timed_runner(rm, texts):
    from bench import sync  # benchmarks/scoring/bench.py

    sync()
    t0 = time.perf_counter()
    scores = rm.score(texts)  # what the scorer's compute() does per chunk, incl. tokenising
    sync()
    return time.perf_counter() - t0, scores


def score_model(
    rm_dir: Path, records: list[dict], max_length: int, budget: int, bf16: bool, device: str, repeats: int
) -> dict:
    """Runner vs bare forward for one reward model folder; each timed ``repeats`` times after a full warm-up."""
    from bench import bare_forward  # benchmarks/scoring/bench.py

    from curation.core.models import ModelSpec
    from curation.scoring.runner import RewardModel, RunnerConfig
    from curation.scoring.texts import render

    rm = RewardModel(
        ModelSpec(str(rm_dir)),
        RunnerConfig(device=device, max_length=max_length, token_budget=budget, bf16=bf16),
    )
    texts = [render(rm.tokenizer, r["prompt"] + r["chosen"]) for r in records]
    texts += [render(rm.tokenizer, r["prompt"] + r["rejected"]) for r in records]
    n = len(records)
    rm.score(texts)  # warm-up over every batch shape: CUDA context, kernels, allocator
    runner_s, runner_scores = _best_of(repeats, lambda: _timed_runner(rm, texts))
    encoded = rm.tokenize(texts)
    tokens = sum(len(e) for e in encoded)
    pad = rm.tokenizer.pad_token_id
    bare_s, bare_scores = _best_of(
        repeats, lambda: bare_forward(rm.model, encoded, pad, budget, bf16, limit=max_length)
    )
    return {
        "runner_s": round(runner_s, 3),
        "runner_pairs_per_s": n / runner_s,
        "runner_tokens_per_s": tokens / runner_s,
        "bare_s": round(bare_s, 3),
        "bare_pairs_per_s": n / bare_s,
        "runner_vs_bare": bare_s / runner_s,
        "runner_bare_max_abs_diff": float(np.abs(runner_scores - bare_scores).max()),
        "tokens": tokens,
        "_rm": rm,
        "_texts": texts,
        "_scores": bare_scores,
    }


def scoring(
    pack: Path,
    max_length: int,
    budgets: list[int],
    pipeline_batch: int,
    device: str,
    limit: int,
    repeats: int,
) -> dict:
    """The bundled MiniLM as a reward model (a seeded head): runner, bare and pipeline, bf16 and fp32."""
    import torch
    from bench import naive_pipeline, precision_tolerance  # benchmarks/scoring/bench.py
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    rm_dir = Path("/tmp/curate_gpu_rm")
    m = AutoModelForSequenceClassification.from_pretrained(str(pack / "minilm"), num_labels=1)
    m.save_pretrained(rm_dir)  # a reward model with a seeded head: speed does not depend on its values
    AutoTokenizer.from_pretrained(str(pack / "minilm")).save_pretrained(rm_dir)
    records = load_pairs(pack, limit)
    n = len(records)
    res: dict = {"pairs": n, "max_length": max_length, "pipeline_batch": pipeline_batch, "repeats": repeats}
    res["runs"] = {}
    for budget in budgets:
        for bf16 in (True, False):
            key = f"budget{budget}_{'bf16' if bf16 else 'fp32'}"
            res["runs"][key] = score_model(rm_dir, records, max_length, budget, bf16, device, repeats)
            print(key, {k: v for k, v in res["runs"][key].items() if not k.startswith("_")}, flush=True)
        rm, texts = res["runs"][f"budget{budget}_fp32"]["_rm"], res["runs"][f"budget{budget}_fp32"]["_texts"]
        naive_s = naive_pipeline(rm.model, rm.tokenizer, texts, pipeline_batch, max_length)
        res["runs"][f"budget{budget}_naive_pipeline_fp32"] = {
            "seconds": round(naive_s, 3),
            "pairs_per_s": n / naive_s,
        }
        for prec in ("bf16", "fp32"):
            run = res["runs"][f"budget{budget}_{prec}"]
            run["runner_vs_naive_fp32"] = naive_s / run["runner_s"]
        fp32, bf16_scores = (res["runs"][f"budget{budget}_{p}"]["_scores"] for p in ("fp32", "bf16"))
        res[f"budget{budget}_bf16_vs_fp32"] = precision_tolerance(fp32, bf16_scores, n)
        print(
            f"budget {budget}: naive {naive_s:.2f} s; tolerance {res[f'budget{budget}_bf16_vs_fp32']}",
            flush=True,
        )
    for run in res["runs"].values():
        for k in [k for k in run if k.startswith("_")]:
            run.pop(k)
    return res


def scoring_large(
    pack: Path,
    max_length: int,
    budget: int,
    pipeline_batch: int,
    device: str,
    limit: int,
    repeats: int,
    layers: int = 22,
) -> dict:
    """A reward model of realistic size: a 1.1B Llama-shaped sequence classifier (TinyLlama's shape,
    random bf16 weights: speed does not depend on their values), saved and loaded like any RM folder.
    Runner vs bare in bf16, and the naive pipeline on the same bf16 model."""
    from bench import naive_pipeline  # benchmarks/scoring/bench.py
    from llama_rm import build_llama_rm  # benchmarks/gpu/llama_rm.py

    t0 = time.perf_counter()
    rm_dir = Path("/tmp/curate_gpu_rm_1b")
    params = build_llama_rm(rm_dir, pack / "minilm", device, layers)
    build_s = time.perf_counter() - t0
    records = load_pairs(pack, limit)
    n = len(records)
    run = score_model(rm_dir, records, max_length, budget, True, device, repeats)
    rm, texts = run.pop("_rm"), run.pop("_texts")
    run.pop("_scores")
    naive_s = naive_pipeline(rm.model, rm.tokenizer, texts, pipeline_batch, max_length)
    run["naive_pipeline_bf16_s"] = round(naive_s, 3)
    run["runner_vs_naive_bf16"] = naive_s / run["runner_s"]
    res = {"pairs": n, "params": params, "build_and_save_s": round(build_s, 1), "budget": budget}
    res |= {"max_length": max_length, "pipeline_batch": pipeline_batch, "repeats": repeats, "run": run}
    print("1B", res, flush=True)
    return res


def train_large(
    pack: Path,
    device: str,
    layers: int,
    hidden: int,
    max_length: int,
    batch: int,
    sft_rows: int,
    groups: int,
    order: list[str],
    pad_multiple: int = 0,
) -> dict:
    """The bundled SFT (UAL label smoothing, and plain cross-entropy for comparison) and RESCUE trainers
    on a causal LM of realistic size: a 1.1B Llama-shaped model (random weights; speed does not depend on
    their values) with fp32 master weights under bf16 autocast, one epoch over the demo build's sft and
    ranking shards. Tokens per second count every token of the sequences trained on (no padding).
    ``order`` names the runs in order (a name may repeat: each run is kept, and the best per name reported).
    ``pad_multiple`` is the trainers' ``pad_to_multiple_of`` (0: their default, 64 on CUDA; 1: no rounding).
    The model folder is built once and reused by later processes (each variant runs in a fresh one)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from curation.core.models import ModelSpec, load_tokenizer
    from training import rescue, sft

    tok = AutoTokenizer.from_pretrained(str(pack / "minilm"))
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token  # a BERT vocabulary has no eos of its own
    heads = max(1, hidden // 64)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 8),
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    lm_dir = Path(f"/tmp/curate_gpu_lm_{layers}x{hidden}")
    if not (lm_dir / "config.json").exists():
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
        model.save_pretrained(lm_dir)
        tok.save_pretrained(lm_dir)
        del model
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    res: dict = {"params": params, "build_and_save_s": round(time.perf_counter() - t0, 1), "batch": batch}
    res["pad_to_multiple_of"] = pad_multiple
    res["alloc_conf"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    res |= {"max_length": max_length, "layers": layers, "hidden": hidden, "runs": {}}
    shards = str(pack / "build")
    common = {
        "shards": shards,
        "model": str(lm_dir),
        "bf16": True,
        "use_cpu": device == "cpu",
        "max_length": max_length,
        "per_device_train_batch_size": batch,
        "num_train_epochs": 1,
        "save_strategy": "no",
        "report_to": [],
        "eval_split": None,
        "logging_steps": 5,
        "pad_to_multiple_of": pad_multiple,
    }
    ptok = load_tokenizer(ModelSpec(str(lm_dir)))
    ptok.pad_token = ptok.pad_token or ptok.eos_token
    kinds = {
        "warmup": (sft, sft.SFTConfig, {}, 2 * batch),
        "sft_ual": (sft, sft.SFTConfig, {}, sft_rows),
        "sft_plain": (sft, sft.SFTConfig, {"use_label_smoothing": False, "use_weights": False}, sft_rows),
        "rescue": (rescue, rescue.RescueConfig, {}, groups),
    }
    peak_tflops = 989.0  # H100/H200 dense bf16
    res["order"] = order
    for k, name in enumerate(order):
        mod, config_cls, extra, limit = kinds[name]
        out_dir = f"/tmp/curate_gpu_train/{k}_{name}"
        config = config_cls(output_dir=out_dir, max_train_samples=limit, **common, **extra)
        if mod is sft:
            data, _ = sft.load_sft(shards, "train", ptok, config, limit)
        else:
            data, _, _ = rescue.load_groups(shards, "train", ptok, config, limit)
        tokens = int(sum(data.lengths))
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        out = mod.train(config)
        secs = out["train_seconds"]
        run = {
            "items": len(data),
            "tokens": tokens,
            "train_seconds": round(secs, 2),
            "steps": out["global_step"],
        }
        run["tokens_per_s"] = round(tokens / secs)
        run["train_loss"] = round(out["train_loss"], 4)
        # forward + backward of a decoder: about 6 FLOPs per parameter per token (attention not counted)
        run["model_tflops_per_s"] = round(6 * params * tokens / secs / 1e12, 1)
        run["mfu_vs_989_tflops"] = round(run["model_tflops_per_s"] / peak_tflops, 3)
        if device.startswith("cuda"):
            run["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            stats = torch.cuda.memory_stats()  # cumulative over the process
            run["alloc_retries_so_far"] = stats.get("num_alloc_retries")
            run["device_mallocs_so_far"] = stats.get("num_device_alloc")
        res["runs"].setdefault(name, []).append(run)
        print(name, run, flush=True)
        del out
        gc.collect()  # the finished trainer (model, optimizer) is in reference cycles: free it before the next
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    res["best"] = {name: min(rs, key=lambda r: r["train_seconds"]) for name, rs in res["runs"].items()}
    return res


def stack_with_features(margins: np.ndarray, records: list[dict], keys: list[str], folds: int) -> np.ndarray:
    """Out-of-fold margins of a Bradley-Terry logistic head on [model margin, dialogue-feature differences].

    ``margins`` must be out-of-fold already (chosen - rejected, one per record). The head is fitted to
    the given labels on the other folds (folds by prompt, a repeat the models did not use), so it learns
    how much the cheap features (length, refusals, lists, overlap) add to the model's margin.
    """
    from curation.scoring.crossfit import _fit_logistic, dialogue_feature_pairs, fold_of

    fc, fr = dialogue_feature_pairs(records)
    dx = np.column_stack([margins, fc - fr])
    scale = dx.std(0) + 1e-9  # symmetric features: scale, never centre
    dx = dx / scale
    fold = fold_of(keys, folds, 1000)
    out = np.empty(len(records))
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        if test.all():  # one fold holds every prompt: nothing to fit on
            return margins.copy()
        out[test] = _fit_logistic(dx[~test], 1.0, k)(dx[test])
    return out


def noise(
    pack: Path, configs: list[dict], max_length: int, folds: int, device: str, limit: int, out: Path
) -> dict:
    from sklearn.metrics import roc_auc_score

    from curation.core.models import ModelSpec, load_tokenizer
    from curation.scoring.crossfit import finetune_rewards
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
            soft_label=cfg.get("soft_label", 0.0),
        )
        mu = (rc - rr).mean(1)
        name = f"ep{cfg['epochs']}_lr{cfg['lr']:g}_rep{cfg['repeats']}_soft{cfg.get('soft_label', 0.0):g}"
        res["runs"][name] = cfg | metrics(-mu) | {"seconds": round(time.perf_counter() - t0, 1)}
        res["runs"][name]["oof_accuracy_on_noisy_labels"] = float((mu > 0).mean())
        res["runs"][name]["stacked_with_features"] = metrics(-stack_with_features(mu, records, keys, folds))
        for rep in range(cfg["repeats"]):
            res["runs"][name].setdefault("per_repeat", []).append(metrics(-(rc[:, rep] - rr[:, rep])))
        np.save(Path(out) / f"noise_margins_{name}.npy", np.stack([rc, rr]))
        print(name, res["runs"][name], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["unpack", "scoring", "scoring_large", "noise", "train_large"])
    ap.add_argument("--pack", default=str(REPO / ".devpack"))
    ap.add_argument("--out", default="gpu-out")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budgets", default="8192,65536")
    ap.add_argument("--pipeline-batch", type=int, default=16)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0, help="first N pairs only (a smoke test)")
    ap.add_argument("--repeats", type=int, default=2, help="scoring: timed runs per contender (best is kept)")
    ap.add_argument(
        "--layers", type=int, default=22, help="scoring_large, train_large: decoder layers (22: 1.1B)"
    )
    ap.add_argument("--hidden", type=int, default=2048, help="train_large: hidden size (2048: 1.1B)")
    ap.add_argument(
        "--batch", type=int, default=8, help="train_large: rows (sft) or groups (rescue) per step"
    )
    ap.add_argument("--sft-rows", type=int, default=1024, help="train_large: sft rows in the timed epoch")
    ap.add_argument("--groups", type=int, default=256, help="train_large: ranking groups in the timed epoch")
    ap.add_argument(
        "--order",
        default="warmup,sft_plain,sft_ual,sft_ual,sft_plain,rescue,rescue",
        help="train_large: runs in order (warmup, sft_ual, sft_plain, rescue; repeats allowed)",
    )
    ap.add_argument(
        "--pad-multiple", type=int, default=0, help="train_large: pad_to_multiple_of (0: default, 1: none)"
    )
    ap.add_argument("--tag", default="", help="suffix of the result file's name (<section><tag>.json)")
    ap.add_argument(
        "--configs",
        default="2:5e-5:1,2:5e-5:1:0.1,2:5e-5:3",
        help="noise: comma-separated epochs:lr:repeats[:soft_label]",
    )
    args = ap.parse_args()
    pack, out = Path(args.pack), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.section == "unpack":
        return unpack(pack)
    if args.section == "scoring":
        budgets = [int(b) for b in args.budgets.split(",")]
        res = scoring(
            pack, args.max_length, budgets, args.pipeline_batch, args.device, args.limit, args.repeats
        )
    elif args.section == "scoring_large":
        budget = int(args.budgets.split(",")[-1])
        res = scoring_large(
            pack,
            args.max_length,
            budget,
            args.pipeline_batch,
            args.device,
            args.limit,
            args.repeats,
            args.layers,
        )
    elif args.section == "train_large":
        res = train_large(
            pack,
            args.device,
            args.layers,
            args.hidden,
            args.max_length,
            args.batch,
            args.sft_rows,
            args.groups,
            args.order.split(","),
            args.pad_multiple,
        )
    else:
        configs = []
        for c in args.configs.split(","):
            e, lr, r, *soft = c.split(":")
            configs.append(
                {"epochs": int(e), "lr": float(lr), "repeats": int(r), "soft_label": float((soft or [0])[0])}
            )
        res = noise(pack, configs, args.max_length, args.folds, args.device, args.limit, out)
    res["environment"] = environment()
    res["seconds_total"] = round(time.perf_counter() - t0, 1)
    res["command"] = " ".join(["python3", *sys.argv])
    (out / f"{args.section}{args.tag}.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
