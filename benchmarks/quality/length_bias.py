"""Experiment 2: length bias on AlpacaEval: a reward model plain and with product-of-experts debiasing.

The three AlpacaEval annotation files judge the same model (gpt-3.5-turbo-1106) prompted concise,
default and verbose against one baseline; the judge mostly prefers the longer answer. Arms: (a) plain
Bradley-Terry, (b) PoE with the trainer's length expert (``poe_expert: length``), (c) PoE with the
paper's noisy-embedding expert, (d) the length expert without resampling by its residuals (an
ablation; ``lb_arms`` picks the arms). Held out we report Spearman(reward, response tokens) over every test
response, accuracy on all test pairs and on those where the shorter (longer) answer, in tokens, is
preferred, all from ``training.rm.evaluate``, and their mean (the length-balanced accuracy, where length
alone scores 0.5); and each setting's chosen-longer share of the train shard.

Settings:

- ``issue`` (the issue's setup): the three files as ``curate ingest`` reads them, built with
  ``lb_issue.yaml`` (the default policy's rm consumer, near-duplicate prompts kept, 20 % of the
  instructions held out). ``lb_instructions`` uses a seeded subset of the 805 instructions (all three
  files' judgments of each), for quick runs.
- ``chosen_longer`` (the earlier setting): per instruction the three direct judgments plus the
  variant-vs-variant pairs whose judge scores differ by at least ``MIN_GAP`` (preference
  1.5 + (p_b - p_a) / 2, written in AlpacaEval's own format and read by its reader), instructions split
  80/20; train only on train pairs whose chosen answer is longer (``lb_train.yaml``), test on all test
  pairs (``lb_test.yaml``).

Each finished training is appended to ``<work>/runs.jsonl``; a rerun with the same ``--work`` and sizes
skips it (the machine is slow and shared; a cut run resumes).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from benchmarks.quality.common import (
    SHARED,
    Clock,
    Row,
    Sizes,
    build,
    count_rows,
    eval_rm,
    fresh_dir,
    train_rm,
)

EXPERIMENT = "2 length bias (AlpacaEval)"
VARIANTS = ("concise", "default", "verbose")
FILES = {"default": "", "concise": "_concise", "verbose": "_verbose"}
MIN_GAP = 0.1
SPLIT_SALT = "curate-quality-alpacaeval-split-v1"
ARMS = {
    "plain": ("(a) plain BT", {}),
    "poe_length": ("(b) PoE, length expert", {"poe": True, "poe_expert": "length"}),
    "poe_noisy": ("(c) PoE, noisy-embedding expert", {"poe": True, "poe_expert": "noisy_embedding"}),
    # ablation: the length expert without resampling by its residuals (poe_resample: false)
    "poe_length_nors": (
        "(d) PoE, length expert, no resampling",
        {"poe": True, "poe_expert": "length", "poe_resample": False},
    ),
}
SETTINGS = {"issue": "issue setup: 3 files, held out by instruction", "chosen_longer": "train: chosen longer"}
METRICS = (
    ("Spearman(reward, length), test", "spearman_reward_length"),
    ("accuracy, shorter preferred", "accuracy_shorter_preferred"),
    ("accuracy, longer preferred", "accuracy_longer_preferred"),
    ("accuracy, all test", "accuracy"),
    ("accuracy, length-balanced", "accuracy_length_balanced"),
)


def with_balanced_accuracy(metrics: dict) -> dict:
    """``metrics`` with the mean of the shorter- and longer-preferred accuracies: the accuracy a test set
    with as many pairs won by the shorter answer as by the longer would give (length alone scores 0.5)."""
    short, long = metrics.get("accuracy_shorter_preferred"), metrics.get("accuracy_longer_preferred")
    balanced = float("nan") if short is None or long is None else (short + long) / 2
    return metrics | {"accuracy_length_balanced": balanced}


def annotation_path(variant: str, shared: Path = SHARED) -> Path:
    return shared / "alpaca-eval" / f"gpt-3.5-turbo-1106{FILES[variant]}.annotations.json"


def load_alpaca_eval(shared: Path = SHARED) -> dict[str, list[dict]]:
    return {v: json.loads(annotation_path(v, shared).read_text()) for v in FILES}


def judgments(data: dict[str, list[dict]]) -> list[list[dict]]:
    """Per instruction, AlpacaEval-format judgments: the direct ones and derived variant-vs-variant ones."""
    n = len(data["default"])
    out = []
    for k in range(n):
        rows = {v: data[v][k] for v in VARIANTS}
        instr = rows["default"]["instruction"]
        if any(r["instruction"] != instr for r in rows.values()):
            raise ValueError(f"alpaca-eval row {k}: the three files disagree on the instruction")
        group = [
            {
                "instruction": instr,
                "output_1": r["output_1"],
                "output_2": r["output_2"],
                "preference": r["preference"],
            }
            for r in rows.values()
            if r["preference"] is not None and r["preference"] != 1.5
        ]
        for i, a in enumerate(VARIANTS):
            for b in VARIANTS[i + 1 :]:
                pa, pb = rows[a]["preference"], rows[b]["preference"]
                if pa is None or pb is None or abs(pb - pa) < MIN_GAP:
                    continue
                group.append(
                    {
                        "instruction": instr,
                        "output_1": rows[a]["output_2"],
                        "output_2": rows[b]["output_2"],
                        "preference": 1.5 + (pb - pa) / 2,
                    }
                )
        out.append(group)
    return out


def split(groups: list[list[dict]], test_fraction: float) -> tuple[list[dict], list[dict]]:
    from schemas.ids import text_id

    train, test = [], []
    for g in groups:
        if not g:
            continue
        h = int(text_id(SPLIT_SALT, g[0]["instruction"])[:16], 16) / 2**64
        (test if h < test_fraction else train).extend(g)
    return train, test


def chosen_longer(row: dict) -> bool:
    chosen, rejected = (
        (row["output_2"], row["output_1"]) if row["preference"] > 1.5 else (row["output_1"], row["output_2"])
    )
    return len(chosen) > len(rejected)


def issue_files(work: Path, instructions: int | None) -> list[Path]:
    """The three annotation files; with ``instructions``, copies holding a seeded subset of the instructions."""
    paths = [annotation_path(v) for v in VARIANTS]
    if instructions is None:
        return paths
    data = load_alpaca_eval()
    n = len(data["default"])
    keep = sorted(random.Random(0).sample(range(n), min(instructions, n)))
    work.mkdir(parents=True, exist_ok=True)
    out = []
    for v, path in zip(VARIANTS, paths, strict=True):
        sub = work / path.name  # same file name: the same source names as the whole files
        sub.write_text(json.dumps([data[v][k] for k in keep]))
        out.append(sub)
    return out


def prepare_issue(work: Path, sizes: Sizes, log) -> tuple[Path, Path, str]:
    """(train build, test build, test split) of the issue setting."""
    from curation.core.store import Store
    from curation.ingest.pipeline import ingest_paths

    store = Store(fresh_dir(work / "store_issue"))
    for res in ingest_paths(store, [str(p) for p in issue_files(work / "files", sizes.lb_instructions)]):
        if res.error:
            raise RuntimeError(f"ingest {res}: {res.error}")
    shards = build(store, "lb_issue")
    log(f"exp2 issue: {count_rows(shards)} train pairs, {count_rows(shards, split='eval')} test pairs")
    return shards, shards, "eval"


def prepare_chosen_longer(work: Path, sizes: Sizes, log) -> tuple[Path, Path, str]:
    """(train build, test build, test split) of the chosen-longer setting."""
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    train, test = split(judgments(load_alpaca_eval()), sizes.test_fraction)
    follow = [r for r in train if chosen_longer(r)]
    rng = random.Random(0)
    if sizes.lb_train_limit is not None and len(follow) > sizes.lb_train_limit:
        follow = rng.sample(follow, sizes.lb_train_limit)
    if sizes.lb_test_limit is not None and len(test) > sizes.lb_test_limit:
        test = rng.sample(test, sizes.lb_test_limit)
    log(
        f"exp2 chosen_longer: {len(train)} train judgments, {sum(map(chosen_longer, train))} follow length, "
        f"training on {len(follow)}; {len(test)} test pairs"
    )
    store = Store(fresh_dir(work / "store_chosen_longer"))
    for name, rows in (("lb_train", follow), ("lb_test", test)):
        path = work / f"{name}.json"
        path.write_text(json.dumps(rows))
        for res in ingest_paths(store, [str(path)], IngestOptions(reader="alpaca_eval", source=name)):
            if res.error:
                raise RuntimeError(f"ingest {path}: {res.error}")
    return build(store, "lb_train"), build(store, "lb_test"), "train"


PREPARE = {"issue": prepare_issue, "chosen_longer": prepare_chosen_longer}


def sizes_key(sizes: Sizes, setting: str) -> str:
    """What a finished training depends on, so a rerun with other sizes does not reuse it."""
    relevant = {
        k: getattr(sizes, k)
        for k in ("test_fraction", "rm_batch", "rm_lr", "rm_epochs", "lb_max_length", "lb_instructions")
    }
    if setting == "chosen_longer":
        relevant.update(lb_train_limit=sizes.lb_train_limit, lb_test_limit=sizes.lb_test_limit)
    return hashlib.sha256(json.dumps([setting, relevant], sort_keys=True).encode()).hexdigest()[:16]


def load_done(path: Path) -> dict[tuple[str, str, str, int], dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["key"], r["setting"], r["arm"], r["seed"])] = r
    return done


def run(work: Path, sizes: Sizes, command: str, log=print) -> list[Row]:
    work.mkdir(parents=True, exist_ok=True)
    runs_file = work / "runs.jsonl"
    done = load_done(runs_file)
    rows_out = []
    for setting in sizes.lb_settings:
        if setting not in SETTINGS:
            raise ValueError(f"lb_settings: unknown setting {setting!r}; choose from {sorted(SETTINGS)}")
        key = sizes_key(sizes, setting)
        with Clock() as prep_clock:
            train_build, test_build, test_split = PREPARE[setting](work, sizes, log)
        for arm in sizes.lb_arms:
            if arm not in ARMS:
                raise ValueError(f"lb_arms: unknown arm {arm!r}; choose from {sorted(ARMS)}")
            label, options = ARMS[arm]
            results = []
            for seed in sizes.seeds:
                r = done.get((key, setting, arm, seed))
                if r is None:
                    with Clock() as clock:
                        res = train_rm(
                            train_build,
                            work / f"rm_{setting}_{arm}_{seed}",
                            sizes,
                            seed,
                            max_length=sizes.lb_max_length,
                            **options,
                        )
                        metrics = eval_rm(Path(res["output_dir"]), test_build, split=test_split)
                    shutil.rmtree(res["output_dir"], ignore_errors=True)
                    r = {
                        "key": key,
                        "setting": setting,
                        "arm": arm,
                        "seed": seed,
                        "seconds": clock.seconds,
                        "metrics": metrics,
                        "train_pairs": res["pairs_trained"],
                        "train_chosen_longer_share": res["train_chosen_longer_share"],
                        "bias_expert": res["bias_expert"],
                    }
                    with open(runs_file, "a") as fh:
                        fh.write(json.dumps(r) + "\n")
                r["metrics"] = m = with_balanced_accuracy(r["metrics"])
                log(
                    f"exp2 {setting} {arm} seed {seed}: spearman {m.get('spearman_reward_length', float('nan')):.3f} "
                    f"acc {m['accuracy']:.3f} shorter-preferred {m.get('accuracy_shorter_preferred', float('nan')):.3f} "
                    f"({r['seconds']:.0f}s)"
                )
                results.append(r)
            first = results[0]["metrics"]
            extra = {
                "train_pairs": count_rows(train_build),
                "test_pairs": int(first["pairs"]),
                "shorter_preferred_test_pairs": int(first["pairs_shorter_preferred"]),
                "train_chosen_longer_share_tokens": results[0]["train_chosen_longer_share"],
                "test_chosen_longer_share_tokens": first["pairs_longer_preferred"]
                / max(1.0, first["pairs_longer_preferred"] + first["pairs_shorter_preferred"]),
                "bias_expert": [r["bias_expert"] for r in results],
            }
            seconds = sum(r["seconds"] for r in results) + prep_clock.seconds / len(sizes.lb_arms)
            for metric, name in METRICS:
                rows_out.append(
                    Row(
                        EXPERIMENT,
                        label,
                        SETTINGS[setting],
                        metric,
                        [r["metrics"].get(name, float("nan")) for r in results],
                        list(sizes.seeds),
                        seconds,
                        command,
                        extra,
                    )
                )
    return rows_out
