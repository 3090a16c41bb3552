"""Experiment 3: worst-group accuracy of the reward model with and without group DRO.

HH-RLHF harmless pairs (clean labels), split by prompt as in experiment 1. Train and test pairs go
into two stores, and the ``spurious_groups`` scorer runs on each separately (group id = 2 y + z with
y = chosen is longer and z the Q-Diversity pseudo-attribute for hard pairs), so nothing about the
test pairs reaches training. The reward model trains with plain Bradley-Terry or with group DRO over
the train groups, and is evaluated per group on the test pairs (groups the scorer gave them there).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.quality.common import (
    Clock,
    Row,
    Sizes,
    build,
    count_rows,
    eval_rm,
    fresh_dir,
    rm_length_shares,
    train_rm,
    write_jsonl,
)
from benchmarks.quality.noisy_preferences import load_hh, split_by_prompt, subsample
from curation import catalog

ARMS = {"(a) plain BT": {}, "(b) group DRO": {"group_dro": True}}


def reuse_embeddings(exp1_work: Path, store_root: Path) -> None:
    """Seed the store's content-keyed score cache with experiment 1's (same encoder, same HH texts)."""
    for cache in sorted(exp1_work.glob("store_*/scores/cache")):
        shutil.copytree(cache, store_root / "scores" / "cache", dirs_exist_ok=True)
        return


def run(work: Path, sizes: Sizes, command: str, log=print) -> list[Row]:
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring import run_scorer

    train, test = split_by_prompt(load_hh(), sizes.test_fraction)
    train = subsample(train, sizes.groups_train_limit, seed=1)
    test = subsample(test, sizes.hh_test_limit)
    builds, counts, reports = {}, {}, {}
    with Clock() as prep:
        for name, rows in (("train", train), ("test", test)):
            store = Store(fresh_dir(work / f"store_{name}"))
            reuse_embeddings(work.parent / "exp1", store.root)
            path = write_jsonl(rows, work / f"hh_{name}.jsonl")
            for res in ingest_paths(store, [str(path)], IngestOptions(reader="hh", source=f"hh_{name}")):
                if res.error:
                    raise RuntimeError(f"ingest {path}: {res.error}")
            reports[name] = run_scorer(store, "spurious_groups", progress=False, **sizes.groups_params).report
            builds[name] = build(store, f"grp_{name}")
            counts[name] = (
                catalog.connect(store)
                .sql("SELECT group_id, count(*) FROM scored_pairs GROUP BY ALL ORDER BY ALL")
                .fetchall()
            )
    log(
        f"exp3: (group, pairs) train {counts['train']}, test {counts['test']}; scored+built in {prep.seconds:.0f}s"
    )

    out = []
    for arm, options in ARMS.items():
        worst, acc, seconds, per_group = [], [], prep.seconds / len(ARMS), []
        for seed in sizes.seeds:
            with Clock() as clock:
                res = train_rm(
                    builds["train"],
                    work / f"rm_{seed}",
                    sizes,
                    seed,
                    **options,
                    **({"group_dro_eta": sizes.dro_eta} if options else {}),
                )
                m = eval_rm(Path(res["output_dir"]), builds["test"])
            seconds += clock.seconds
            worst.append(m["worst_group_accuracy"])
            acc.append(m["accuracy"])
            per_group.append({k: v for k, v in m.items() if k.startswith("accuracy_group_")})
            log(f"exp3 {arm} seed {seed}: worst group {worst[-1]:.3f}, all {acc[-1]:.3f}, {per_group[-1]}")
            shutil.rmtree(res["output_dir"], ignore_errors=True)
        extra = {
            "train_pairs": count_rows(builds["train"]),
            "test_pairs": count_rows(builds["test"]),
            "groups": {k: [list(c) for c in v] for k, v in counts.items()},
            "per_group_accuracy": per_group,
            "scorer": reports,
            "group_dro_eta": sizes.dro_eta if options else None,
            "chosen_longer": rm_length_shares(builds["train"]),
        }
        for metric, values in (("worst-group accuracy", worst), ("accuracy, all test", acc)):
            out.append(
                Row(
                    "3 spurious groups (HH harmless)",
                    arm,
                    "groups: spurious_groups scorer",
                    metric,
                    values,
                    list(sizes.seeds),
                    seconds,
                    command,
                    extra,
                )
            )
    return out
