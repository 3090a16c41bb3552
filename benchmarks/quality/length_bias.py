"""Experiment 2: length bias on AlpacaEval, reward model with and without product-of-experts debiasing.

The three AlpacaEval annotation files judge the same model (gpt-3.5-turbo-1106) prompted concise,
default and verbose against one baseline. Per instruction that gives four answers and three direct
judge scores p_v = P(variant beats baseline); pairs are the three direct judgments plus the
variant-vs-variant pairs whose scores differ by at least ``MIN_GAP`` (preference 1.5 + (p_b - p_a) / 2,
written in AlpacaEval's own format and read by its reader). Instructions are split 80/20. The reward
models train only on train pairs where the judge's preference follows length (the chosen answer is
longer); held out, we report Spearman(reward, length) on all test pairs and accuracy on the test
pairs where the shorter answer is preferred.
"""

from __future__ import annotations

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

VARIANTS = ("concise", "default", "verbose")
MIN_GAP = 0.1
SPLIT_SALT = "curate-quality-alpacaeval-split-v1"
ARMS = {"plain": {}, "poe": {"poe": True}}


def load_alpaca_eval(shared: Path = SHARED) -> dict[str, list[dict]]:
    folder = shared / "alpaca-eval"
    names = {"default": "", "concise": "_concise", "verbose": "_verbose"}
    return {
        v: json.loads((folder / f"gpt-3.5-turbo-1106{suffix}.annotations.json").read_text())
        for v, suffix in names.items()
    }


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


def run(work: Path, sizes: Sizes, command: str, log=print) -> list[Row]:
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
        f"exp2: {len(train)} train judgments, {sum(map(chosen_longer, train))} follow length, "
        f"training on {len(follow)}; {len(test)} test pairs, {sum(not chosen_longer(r) for r in test)} shorter-preferred"
    )
    store = Store(fresh_dir(work / "store"))
    for name, rows in (("lb_train", follow), ("lb_test", test)):
        path = work / f"{name}.json"
        path.write_text(json.dumps(rows))
        for res in ingest_paths(store, [str(path)], IngestOptions(reader="alpaca_eval", source=name)):
            if res.error:
                raise RuntimeError(f"ingest {path}: {res.error}")
    builds = {p: build(store, p) for p in ("lb_train", "lb_test", "lb_test_shorter")}
    sizes_lb = {"max_length": sizes.lb_max_length}

    rows_out = []
    for arm, options in ARMS.items():
        spearman, acc_short, acc_all, seconds = [], [], [], 0.0
        for seed in sizes.seeds:
            with Clock() as clock:
                res = train_rm(
                    builds["lb_train"], work / f"rm_{arm}_{seed}", sizes, seed, **sizes_lb, **options
                )
                m_all = eval_rm(Path(res["output_dir"]), builds["lb_test"])
                m_short = eval_rm(Path(res["output_dir"]), builds["lb_test_shorter"])
            seconds += clock.seconds
            spearman.append(m_all.get("spearman_reward_length", float("nan")))
            acc_all.append(m_all["accuracy"])
            acc_short.append(m_short["accuracy"])
            log(
                f"exp2 {arm} seed {seed}: spearman {spearman[-1]:.3f} acc {acc_all[-1]:.3f} short {acc_short[-1]:.3f}"
            )
            shutil.rmtree(res["output_dir"], ignore_errors=True)
        extra = {
            "train_pairs": count_rows(builds["lb_train"]),
            "test_pairs": count_rows(builds["lb_test"]),
            "shorter_preferred_test_pairs": count_rows(builds["lb_test_shorter"]),
        }
        label = "(b) product of experts" if arm == "poe" else "(a) plain BT"
        for metric, values in (
            ("Spearman(reward, length), test", spearman),
            ("accuracy, shorter preferred", acc_short),
            ("accuracy, all test", acc_all),
        ):
            rows_out.append(
                Row(
                    "2 length bias (AlpacaEval)",
                    label,
                    "train: chosen longer",
                    metric,
                    values,
                    list(sizes.seeds),
                    seconds,
                    command,
                    extra,
                )
            )
    return rows_out
