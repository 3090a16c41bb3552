"""The quality-experiment harness (benchmarks/quality/run.py) runs end to end at tiny size on the real data
and writes a results table with every row and finite numbers, so the harness cannot rot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "quality" / "run.py"

#: experiment -> (arms, metrics) every tiny run must report
EXPECTED = {
    "1": (
        {"(a) raw noisy", "(b) curated", "(c) random subset", "(d) no flips (ceiling, uses the truth)"},
        {"test accuracy"},
    ),
    "2": (
        {
            "(a) plain BT",
            "(b) PoE, length expert",
            "(c) PoE, noisy-embedding expert",
            "(d) PoE, length expert, no resampling",
        },
        {
            "Spearman(reward, length), test",
            "accuracy, shorter preferred",
            "accuracy, longer preferred",
            "accuracy, all test",
            "accuracy, length-balanced",
        },
    ),
    "3": ({"(a) plain BT", "(b) group DRO"}, {"worst-group accuracy", "accuracy, all test"}),
    "4": ({"(a) plain SFT", "(b) UAL"}, {"held-out loss"}),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data) -> tuple[subprocess.CompletedProcess, Path]:
    """One ``run.py --tiny`` over every experiment (one process: the imports are paid once)."""
    tmp = tmp_path_factory.mktemp("quality")
    env = {
        **os.environ,
        "CURATE_SHARED_DATA": str(shared_data),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(tmp / "prefect"),
    }
    cmd = [
        sys.executable,
        str(RUN),
        "--tiny",
        "--only",
        ",".join(sorted(EXPECTED)),
        "--out",
        str(tmp / "out"),
        "--work",
        str(tmp / "work"),
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return proc, tmp / "out"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_tiny_experiment_writes_every_row(tiny_run, experiment):
    proc, out = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads((out / f"results-{experiment}.json").read_text())
    assert res["tiny"] is True
    arms, metrics = EXPECTED[experiment]
    rows = res["rows"]
    assert {r["arm"] for r in rows} == arms
    assert {r["metric"] for r in rows} == metrics
    for r in rows:
        assert r["values"] and len(r["values"]) == len(r["seeds"]), r
        assert all(math.isfinite(v) for v in r["values"]), r
        assert r["wall_seconds"] > 0 and f"--only {experiment} " in r["command"] + " "
        assert f"--out {out}" in r["command"]  # the recorded command reproduces this run
    md = (out / "RESULTS.md").read_text()
    results_table = md.split("## Results", 1)[1].split("###", 1)[0]  # the main table, one line per row
    assert results_table.count("| " + rows[0]["experiment"] + " |") == len(rows)
    if experiment in ("1", "3"):  # rm arms: the chosen-longer share of each arm's train shard
        lengths = md.split("### Chosen-longer share", 1)[1].split("###", 1)[0]
        assert "| " + rows[0]["experiment"] + " |" in lengths
    assert f"### Experiment {experiment}" in md and "machine:" in md
    assert (out / f"exp{experiment}.png").stat().st_size > 1000


@pytest.mark.slow
def test_noisy_preferences_arms_differ_as_designed(tiny_run):
    """Arm (c) trains on exactly as many pairs as arm (b) kept, and (b) keeps fewer than (a)."""
    _, out = tiny_run
    rows = {(r["arm"], r["setting"]): r for r in json.loads((out / "results-1.json").read_text())["rows"]}
    for setting in ("flip 20 %", "flip 40 %"):
        raw = rows[("(a) raw noisy", setting)]["extra"]["train_pairs"]
        cur = rows[("(b) curated", setting)]["extra"]["train_pairs"]
        rnd = rows[("(c) random subset", setting)]["extra"]["train_pairs"]
        assert rnd == cur
        assert all(c < r for c, r in zip(cur, raw, strict=True))
    assert rows[("(d) no flips (ceiling, uses the truth)", "flip 0 %")]["extra"]["train_pairs"] == raw


def test_hh_split_by_prompt_and_seeded_flips(shared_data):
    from benchmarks.quality.noisy_preferences import flip_labels, load_hh, prompt_key, split_by_prompt

    rows = load_hh(shared_data)
    train, test = split_by_prompt(rows, 0.2)
    assert len(train) + len(test) == len(rows) == 2312
    assert 0.15 < len(test) / len(rows) < 0.25
    assert not {prompt_key(r) for r in train} & {prompt_key(r) for r in test}
    noisy, flipped = flip_labels(train[:200], 0.4, seed=3)
    assert len(flipped) == 80 and flip_labels(train[:200], 0.4, seed=3)[1] == flipped
    assert flip_labels(train[:200], 0.4, seed=4)[1] != flipped
    for i, (a, b) in enumerate(zip(train[:200], noisy, strict=True)):
        swapped = (b["chosen"], b["rejected"]) == (a["rejected"], a["chosen"])
        assert swapped == (i in flipped) or a["chosen"] == a["rejected"]


def test_alpaca_eval_pairs_are_real_judgments(shared_data):
    from benchmarks.quality.length_bias import MIN_GAP, chosen_longer, judgments, load_alpaca_eval, split

    data = load_alpaca_eval(shared_data)
    groups = judgments(data)
    assert len(groups) == 805
    outputs = {v: {r["output_2"] for r in data[v]} for v in data}
    for g in groups[:50]:
        direct = [
            r for r in g if r["output_1"] not in outputs["default"] | outputs["concise"] | outputs["verbose"]
        ]
        assert len(direct) <= 3
        for r in g:
            assert 1.0 <= r["preference"] <= 2.0 and r["preference"] != 1.5
            if r not in direct:
                assert abs(r["preference"] - 1.5) * 2 >= MIN_GAP - 1e-9
    train, test = split(groups, 0.2)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    # the judge mostly prefers the longer answer: the bias the experiment is about
    assert sum(map(chosen_longer, train)) / len(train) > 0.7


def test_sizes_override_parses_each_field_type():
    from benchmarks.quality.common import Sizes

    s = Sizes()
    for item in ("hh_train_limit=none", "rm_max_length=128", "rm_lr=5e-5", "seeds=3,4", "hh_test_limit=50"):
        s.override(item)
    assert (s.hh_train_limit, s.rm_max_length, s.rm_lr, s.seeds, s.hh_test_limit) == (
        None,
        128,
        5e-5,
        (3, 4),
        50,
    )
    s.override('scorer_params={"folds": 3}')
    assert s.scorer_params == {"folds": 3}
    with pytest.raises(ValueError, match="FIELD one of"):
        s.override("no_such_field=1")
