"""Rebuild experiment 1's results file from run logs, for a run cut short (or split across processes).

    .venv/bin/python benchmarks/quality/from_log.py LOG [LOG ...] [--out benchmarks/quality]

Experiment 1 writes its results file only when every noise level and seed is done; its log has one
line per finished training (``exp1 n40_s2 curated: test accuracy 0.5274 (215s)``) and one per scored
store (with the flip diagnostics). This script turns those lines into ``results-1.json`` with the same
rows, marked ``assembled_from_logs`` so the report says so.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.quality.common import HERE, Row, Sizes, machine  # noqa: E402
from benchmarks.quality.report import write_report  # noqa: E402

RUN = re.compile(r"^exp1 n(\d+)_s(\d+) (raw|curated|random): test accuracy ([0-9.]+) \((\d+)s\)")
SCORED = re.compile(r"^exp1 n(\d+)_s(\d+): scored\+built in (\d+)s; curated keeps (\d+)/(\d+); (\{.*\})")
ARM_LABEL = {"raw": "(a) raw noisy", "curated": "(b) curated", "random": "(c) random subset"}


def rows_from_logs(texts: list[str], command: str) -> list[Row]:
    runs: dict[tuple[str, int], dict[int, tuple[float, float]]] = {}
    scored: dict[tuple[int, int], tuple[float, int, int, dict]] = {}
    for text in texts:
        for line in text.splitlines():
            if m := RUN.match(line):
                noise, seed, arm, acc, secs = int(m[1]), int(m[2]), m[3], float(m[4]), float(m[5])
                runs.setdefault((arm, noise), {})[seed] = (acc, secs)
            elif m := SCORED.match(line):
                scored[(int(m[1]), int(m[2]))] = (float(m[3]), int(m[4]), int(m[5]), ast.literal_eval(m[6]))
    out = []
    for (arm, noise), by_seed in sorted(
        runs.items(), key=lambda kv: (kv[0][1], list(ARM_LABEL).index(kv[0][0]))
    ):
        seeds = sorted(by_seed)
        prep = [scored.get((noise, s), (0.0, 0, 0, {})) for s in seeds]
        pairs = [p[2] if arm == "raw" else p[1] for p in prep]
        out.append(
            Row(
                experiment="1 noisy preferences (HH harmless)",
                arm=ARM_LABEL[arm],
                setting=f"flip {noise} %",
                metric="test accuracy",
                values=[by_seed[s][0] for s in seeds],
                seeds=seeds,
                wall_seconds=sum(by_seed[s][1] + p[0] / 3 for s, p in zip(seeds, prep, strict=True)),
                command=command,
                extra={
                    "train_pairs": pairs,
                    "per_seed": [
                        {"seed": s, **(p[3] if arm == "curated" else {})}
                        for s, p in zip(seeds, prep, strict=True)
                    ],
                },
            )
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    command = ".venv/bin/python benchmarks/quality/run.py --only 1"
    rows = rows_from_logs([p.read_text() for p in args.logs], command)
    payload = {
        "experiment": "1",
        "tiny": False,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "wall_seconds": sum(r.wall_seconds for r in rows),
        "machine": machine(),
        "sizes": {k: v for k, v in vars(Sizes()).items()},
        "assembled_from_logs": [str(p) for p in args.logs],
        "rows": [r.to_dict() for r in rows],
    }
    (args.out / "results-1.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(write_report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
