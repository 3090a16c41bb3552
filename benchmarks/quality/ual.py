"""Experiment 4: uncertainty-aware SFT (UAL label smoothing) vs plain SFT on a mixed SFT set.

GSM8K question/answer pairs (low entropy: one right answer) and Alpaca demos (high entropy: many good
answers) are ingested as two sources; the ``uncertainty`` scorer gives every sample u and its UAL
epsilon; two builds (plain: epsilon 0; UAL: the scored epsilon) share one salted-hash train/eval
split. A tiny causal LM (tests/fixtures/tiny_models.py: BPE trained on the same kind of text, random weights)
is trained from the same initial weights on each build, and we report the plain token cross-entropy
of the assistant tokens on the held-out split, per source.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

from benchmarks.quality.common import SHARED, Clock, Row, Sizes, build, count_rows, fresh_dir, write_jsonl
from curation import catalog

ARMS = {"(a) plain SFT": "ual_plain", "(b) UAL": "ual"}
GROUPS = {"gsm8k": "GSM8K (low entropy)", "alpaca": "Alpaca (high entropy)"}


def sft_rows(shared: Path, per_source: int) -> dict[str, list[dict]]:
    rng = random.Random(0)
    with open(shared / "gsm8k" / "test.jsonl", encoding="utf-8") as fh:
        gsm = [json.loads(line) for line in fh if line.strip()]
    alpaca = json.loads((shared / "llama-factory" / "alpaca_en_demo.json").read_text())
    return {
        "gsm8k": rng.sample(gsm, min(per_source, len(gsm))),
        "alpaca": rng.sample(alpaca, min(per_source, len(alpaca))),
    }


def heldout_loss(model_dir: Path, shards: Path, max_length: int) -> dict[str, float]:
    """Mean token cross-entropy (no smoothing) of the assistant tokens of the eval split, per source."""
    import torch

    from curation.core.models import ModelSpec, load_causal_lm, load_tokenizer
    from training.common import render_with_spans
    from training.shards import load_split

    spec = ModelSpec(str(model_dir))
    tok = load_tokenizer(spec)
    model = load_causal_lm(spec).eval()
    table = load_split(shards, "sft", "eval").to_pylist()
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    with torch.inference_mode():
        for row in table:
            text, spans = render_with_spans(tok, row["messages"])
            enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
            ids, offsets = enc["input_ids"][:max_length], enc["offset_mapping"][:max_length]
            labels = [
                i if any(s <= a < e for s, e in spans) else -100
                for i, (a, _b) in zip(ids, offsets, strict=True)
            ]
            if sum(x != -100 for x in labels[1:]) == 0:
                continue
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            nll = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
            src = row["source"]
            total[src] = total.get(src, 0.0) + float(nll)
            count[src] = count.get(src, 0) + int((target != -100).sum())
    return {src: total[src] / count[src] for src in total}


def run(work: Path, sizes: Sizes, command: str, log=print) -> list[Row]:
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring import run_scorer
    from tests.fixtures.tiny_models import build_tiny_causal_lm, gsm8k_and_alpaca_texts
    from training.sft import SFTConfig, train

    per_source = sizes.sft_per_source + sizes.sft_eval_per_source
    data = sft_rows(SHARED, per_source)
    store = Store(fresh_dir(work / "store"))
    gsm_path = write_jsonl(data["gsm8k"], work / "gsm8k.jsonl")
    alpaca_path = work / "alpaca.json"
    alpaca_path.write_text(json.dumps(data["alpaca"]))
    for path, opts in (
        (
            gsm_path,
            IngestOptions(
                reader="map", kind="sft", source="gsm8k", mapping={"prompt": "question", "response": "answer"}
            ),
        ),
        (alpaca_path, IngestOptions(reader="alpaca", source="alpaca")),
    ):
        for res in ingest_paths(store, [str(path)], opts):
            if res.error:
                raise RuntimeError(f"ingest {path}: {res.error}")
    with Clock() as prep:
        summary = run_scorer(store, "uncertainty", progress=False, **sizes.ual_params)
        eval_fraction = sizes.sft_eval_per_source / per_source
        builds = {}
        for arm, policy in ARMS.items():
            builds[arm] = build(store, _policy(policy, eval_fraction))
    eps = (
        catalog.connect(store)
        .sql(
            "SELECT source, avg(uncertainty), avg(label_smoothing), count(*) FROM scored_sft GROUP BY ALL ORDER BY ALL"
        )
        .fetchall()
    )
    log(f"exp4: (source, mean u, mean epsilon, n): {eps}")
    base = build_tiny_causal_lm(work / "tiny_lm", gsm8k_and_alpaca_texts(SHARED))

    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    for arm in ARMS:
        seconds[arm] = prep.seconds / len(ARMS)
        for seed in sizes.seeds:
            with Clock() as clock:
                out = work / f"sft_{seed}"
                cfg = SFTConfig(
                    shards=str(builds[arm]),
                    model=str(base),
                    output_dir=str(out),
                    max_length=sizes.sft_max_length,
                    per_device_train_batch_size=sizes.sft_batch,
                    max_steps=sizes.sft_steps,
                    learning_rate=sizes.sft_lr,
                    warmup_steps=0.1,
                    seed=seed,
                    data_seed=seed,
                    eval_split=None,
                    save_strategy="no",
                    report_to=[],
                    disable_tqdm=True,
                    use_cpu=True,
                    logging_steps=50,
                )
                train(cfg)
                losses = heldout_loss(out, builds[arm], sizes.sft_max_length)
            seconds[arm] += clock.seconds
            for src, loss in losses.items():
                results.setdefault(arm, {}).setdefault(src, []).append(loss)
            log(f"exp4 {arm} seed {seed}: held-out loss {losses}")
            shutil.rmtree(out, ignore_errors=True)
    rows = []
    for arm, by_src in results.items():
        for src, values in sorted(by_src.items()):
            rows.append(
                Row(
                    "4 UAL (GSM8K + Alpaca, tiny LM)",
                    arm,
                    GROUPS.get(src, src),
                    "held-out loss",
                    values,
                    list(sizes.seeds),
                    seconds[arm],
                    command,
                    {
                        "train_samples": count_rows(builds[arm], "sft", "train"),
                        "eval_samples": count_rows(builds[arm], "sft", "eval"),
                        "uncertainty_by_source": [list(e) for e in eps],
                        "scorer": summary.to_dict().get("report", {}),
                        "steps": sizes.sft_steps,
                        "perplexity": [math.exp(v) for v in values],
                    },
                )
            )
    return rows


def _policy(name: str, eval_fraction: float):
    import yaml

    from benchmarks.quality.common import POLICIES
    from curation.builds.policy import parse_policy

    data = yaml.safe_load((POLICIES / f"{name}.yaml").read_text())
    data["split"]["eval_fraction"] = eval_fraction
    return parse_policy(data, f"{name}.yaml")
