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
    "1": ({"(a) raw noisy", "(b) curated", "(c) random subset"}, {"test accuracy"}),
    "2": (
        {"(a) plain BT", "(b) product of experts"},
        {"Spearman(reward, length), test", "accuracy, shorter preferred", "accuracy, all test"},
    ),
    "3": ({"(a) plain BT", "(b) group DRO"}, {"worst-group accuracy", "accuracy, all test"}),
    "4": ({"(a) plain SFT", "(b) UAL"}, {"held-out loss"}),
}


def _run(tmp_path: Path, only: str, shared_data: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CURATE_SHARED_DATA": str(shared_data),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(tmp_path / "prefect"),
    }
    cmd = [
        sys.executable,
        str(RUN),
        "--tiny",
        "--only",
        only,
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        "--threads",
        "1",
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_tiny_experiment_writes_every_row(tmp_path, shared_data, experiment):
    proc = _run(tmp_path, experiment, shared_data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    out = tmp_path / "out"
    res = json.loads((out / f"results-{experiment}.json").read_text())
    arms, metrics = EXPECTED[experiment]
    rows = res["rows"]
    assert {r["arm"] for r in rows} == arms
    assert {r["metric"] for r in rows} == metrics
    for r in rows:
        assert r["values"] and len(r["values"]) == len(r["seeds"]), r
        assert all(math.isfinite(v) for v in r["values"]), r
        assert r["wall_seconds"] > 0 and r["command"].endswith(f"--only {experiment}")
    md = (out / "RESULTS.md").read_text()
    assert md.count("| " + rows[0]["experiment"] + " |") == len(rows)
    assert "machine:" in md
    assert (out / f"exp{experiment}.png").stat().st_size > 1000
