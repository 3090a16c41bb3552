"""Experiment 1: noisy preferences on HH-RLHF harmless, raw vs curated (Secrets-II remedies) vs random.

The HH pairs are split by prompt (salted xxh3 of the prompt text) into train and test. For each noise
level and seed, a seeded share of the train labels is flipped, the noisy pairs go through the public
path (JSONL in HH format -> ingest into a fresh store -> reward_margin cross-fitted scorer on the
noisy labels only -> three builds -> three reward-model trainings), and every model is evaluated on
the same untouched test pairs (their own store and build: the scorer never sees them).

A fourth arm, (d), trains on the same train pairs with no flips at all. It is not a curation method
(it uses the truth the other arms never see); it is the ceiling that curation could at best recover,
so that a null result can be read: is the gap between (a) and (d) larger than the seed spread at all?
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
from pathlib import Path
from typing import Any

import yaml

from benchmarks.quality.common import (
    POLICIES,
    SHARED,
    Clock,
    Row,
    Sizes,
    build,
    count_rows,
    eval_rm,
    fresh_dir,
    ingest,
    rm_length_shares,
    train_rm,
    write_jsonl,
)

SPLIT_SALT = "curate-quality-hh-split-v1"
SOURCE = "hh_train"
ARMS = ("raw", "curated", "random")
ARM_NAMES = {
    "raw": "(a) raw noisy",
    "curated": "(b) curated",
    "random": "(c) random subset",
    "clean": "(d) no flips (ceiling, uses the truth)",
}


def load_hh(shared: Path = SHARED) -> list[dict[str, str]]:
    with gzip.open(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def prompt_key(row: dict[str, str]) -> str:
    """The prompt (the shared dialogue before the last assistant turn) as the pipeline renders it."""
    from curation.ingest.readers.hh import split_transcript
    from schemas.ids import prompt_text

    return prompt_text(split_transcript(row["chosen"], "chosen")[:-1])


def split_by_prompt(rows: list[dict[str, str]], test_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, test): a prompt's pairs all land on one side (salted hash, machine independent)."""
    from schemas.ids import text_id

    train, test = [], []
    for r in rows:
        h = int(text_id(SPLIT_SALT, prompt_key(r))[:16], 16) / 2**64
        (test if h < test_fraction else train).append(r)
    return train, test


def flip_labels(rows: list[dict[str, str]], rate: float, seed: int) -> tuple[list[dict[str, str]], set[int]]:
    """Swap chosen/rejected on exactly round(rate * n) pairs picked by a seeded RNG."""
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(rows)), round(rate * len(rows))))
    out = [
        {"chosen": r["rejected"], "rejected": r["chosen"]} if i in flipped else dict(r)
        for i, r in enumerate(rows)
    ]
    return out, flipped


def subsample(rows: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    if limit is None or limit >= len(rows):
        return rows
    return random.Random(seed).sample(rows, limit)


def pair_ids(rows: list[dict[str, str]]) -> list[str]:
    """The store ids the HH reader gives these rows (content hashes)."""
    from curation.ingest.readers.hh import HHReader
    from schemas.ids import record_id

    reader = HHReader()
    return [record_id("pair", reader.convert(r)[0]) for r in rows]


def random_policy(cap: int, seed: int):
    """Arm (c)'s policy: hh_random.yaml with the cap set to arm (b)'s size and a per-seed salt."""
    from curation.builds.policy import parse_policy

    data = yaml.safe_load((POLICIES / "hh_random.yaml").read_text())
    data["consumers"]["rm"]["mix"] = {"caps": {SOURCE: cap}, "salt": f"random-subset-{seed}"}
    return parse_policy(data, "hh_random.yaml")


def score_noise(store, sizes: Sizes, cache_from: Path | None) -> dict[str, Any]:
    """``curate score reward_margin --backend crossfit`` on the noisy train store (embeddings reused)."""
    from curation.scoring import run_scorer

    if cache_from is not None and (cache_from / "scores" / "cache").is_dir():
        shutil.copytree(cache_from / "scores" / "cache", store.root / "scores" / "cache", dirs_exist_ok=True)
    summary = run_scorer(store, "reward_margin", backend="crossfit", progress=False, **sizes.scorer_params)
    return summary.to_dict()


def noise_diagnostics(store, flipped_ids: set[str]) -> dict[str, float]:
    """How well the scorer's classes and margins find the injected flips (never used for training)."""
    from sklearn.metrics import roc_auc_score

    from curation import catalog

    t = catalog.read(store, "scored_pairs").select(["id", "margin", "quality_class"]).to_pylist()
    y = [r["id"] in flipped_ids for r in t]
    out: dict[str, float] = {}
    margins = [r["margin"] for r in t]
    if all(m is not None for m in margins) and 0 < sum(y) < len(y):
        out["flip_auroc"] = float(roc_auc_score(y, [-m for m in margins]))
    for cls in ("incorrect", "ambiguous"):
        marked = [yy for r, yy in zip(t, y, strict=True) if r["quality_class"] == cls]
        out[f"{cls}_n"] = float(len(marked))
        out[f"{cls}_flip_precision"] = sum(marked) / len(marked) if marked else float("nan")
        out[f"{cls}_flip_recall"] = sum(marked) / max(1, sum(y))
    return out


def run(work: Path, sizes: Sizes, command: str, log=print) -> list[Row]:
    """All arms x noise levels x seeds; one Row per (arm, noise) with the test accuracy per seed."""
    rows_all = load_hh()
    train, test = split_by_prompt(rows_all, sizes.test_fraction)
    train = subsample(train, sizes.hh_train_limit)
    test = subsample(test, sizes.hh_test_limit)
    log(f"exp1: {len(train)} train pairs, {len(test)} test pairs (split by prompt)")

    test_store = ingest(
        fresh_dir(work / "test_store"), write_jsonl(test, work / "hh_test.jsonl"), "hh_test", "hh"
    )
    test_build = build(test_store, "hh_raw", name="test")

    results: dict[tuple[str, float], dict[str, list]] = {}
    clean_store = ingest(
        fresh_dir(work / "store_clean"), write_jsonl(train, work / "hh_train_clean.jsonl"), SOURCE, "hh"
    )
    clean_build = build(clean_store, "hh_raw", name="clean")
    for seed in sizes.seeds:
        with Clock() as clock:
            res = train_rm(clean_build, work / f"rm_clean_s{seed}", sizes, seed)
            metrics = eval_rm(Path(res["output_dir"]), test_build)
        entry = results.setdefault(("clean", 0.0), {"acc": [], "seconds": [], "pairs": [], "extra": []})
        entry["acc"].append(metrics["accuracy"])
        entry["seconds"].append(clock.seconds)
        entry["pairs"].append(count_rows(clean_build))
        entry["extra"].append(
            {
                "seed": seed,
                "train_seconds": res["train_seconds"],
                "pairs_per_second": res["pairs_per_second"],
                "chosen_longer": rm_length_shares(clean_build),
            }
        )
        log(f"exp1 clean s{seed}: test accuracy {metrics['accuracy']:.4f} ({clock.seconds:.0f}s)")
        shutil.rmtree(res["output_dir"], ignore_errors=True)
    cache_from: Path | None = None
    for noise in sizes.noise_levels:
        for seed in sizes.seeds:
            tag = f"n{int(noise * 100)}_s{seed}"
            noisy, flipped = flip_labels(train, noise, seed)
            ids = pair_ids(noisy)
            flipped_ids = {ids[i] for i in flipped}
            store_dir = fresh_dir(work / f"store_{tag}")
            with Clock() as prep:
                store = ingest(store_dir, write_jsonl(noisy, work / f"hh_train_{tag}.jsonl"), SOURCE, "hh")
                score = score_noise(store, sizes, cache_from)
                cache_from = store_dir
                diag = noise_diagnostics(store, flipped_ids)
                builds = {"raw": build(store, "hh_raw"), "curated": build(store, "hh_curated")}
                n_curated = count_rows(builds["curated"])
                builds["random"] = build(store, random_policy(n_curated, seed))
            log(
                f"exp1 {tag}: scored+built in {prep.seconds:.0f}s; curated keeps {n_curated}/{len(noisy)}; {diag}"
            )
            for arm in ARMS:
                with Clock() as clock:
                    res = train_rm(builds[arm], work / f"rm_{tag}_{arm}", sizes, seed)
                    metrics = eval_rm(Path(res["output_dir"]), test_build)
                entry = results.setdefault((arm, noise), {"acc": [], "seconds": [], "pairs": [], "extra": []})
                entry["acc"].append(metrics["accuracy"])
                entry["seconds"].append(clock.seconds + (prep.seconds / len(ARMS)))
                entry["pairs"].append(count_rows(builds[arm]))
                entry["extra"].append(
                    {
                        "seed": seed,
                        "train_seconds": res["train_seconds"],
                        "pairs_per_second": res["pairs_per_second"],
                        "chosen_longer": rm_length_shares(builds[arm]),
                    }
                    | ({"scorer": score.get("report", {}), **diag} if arm == "curated" else {})
                )
                log(f"exp1 {tag} {arm}: test accuracy {metrics['accuracy']:.4f} ({clock.seconds:.0f}s)")
                shutil.rmtree(res["output_dir"], ignore_errors=True)
    out = []
    for (arm, noise), e in results.items():
        out.append(
            Row(
                experiment="1 noisy preferences (HH harmless)",
                arm=ARM_NAMES[arm],
                setting=f"flip {int(noise * 100)} %",
                metric="test accuracy",
                values=e["acc"],
                seeds=list(sizes.seeds),
                wall_seconds=sum(e["seconds"]),
                command=command,
                extra={"train_pairs": e["pairs"], "test_pairs": len(test), "per_seed": e["extra"]},
            )
        )
    return out
