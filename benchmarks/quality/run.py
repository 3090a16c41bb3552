"""Run the quality experiments end to end and write the results table and plots.

    .venv/bin/python benchmarks/quality/run.py                # all experiments, full size -> RESULTS.md
    .venv/bin/python benchmarks/quality/run.py --only 1,2     # a subset (rows of the others are kept)
    .venv/bin/python benchmarks/quality/run.py --tiny --out /tmp/q   # seconds-size smoke run (the test)

Experiments (described in NOTES.md, results in RESULTS.md): 1 noisy preferences (HH-RLHF harmless),
2 length bias (AlpacaEval), 3 spurious groups with group DRO (HH-RLHF harmless), 4 UAL on a mixed
SFT set (GSM8K + Alpaca) with a tiny causal LM. Each experiment writes its rows to
``<out>/results-<n>.json`` as soon as it finishes, so a partial run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from benchmarks.quality.common import HERE, Row, Sizes, machine  # noqa: E402
from benchmarks.quality.report import write_report  # noqa: E402

EXPERIMENTS = {
    "1": "benchmarks.quality.noisy_preferences",
    "2": "benchmarks.quality.length_bias",
    "3": "benchmarks.quality.groups",
    "4": "benchmarks.quality.ual",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tiny", action="store_true", help="tens of pairs and a few steps: checks the harness only"
    )
    ap.add_argument("--only", default="1,2,3,4", help="comma-separated experiments to run (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/quality)")
    ap.add_argument(
        "--work", type=Path, default=None, help="scratch folder for stores and models (default: temp)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--keep-going", action="store_true", help="record a failed experiment and run the others")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds instead of the default 0,1,2")
    ap.add_argument(
        "--noise", default=None, help="experiment 1: comma-separated flip rates instead of 0.2,0.4"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of Sizes (benchmarks/quality/common.py), e.g. --set hh_train_limit=none "
        "--set rm_max_length=128; repeatable",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="only rewrite RESULTS.md and plots from results-*.json"
    )
    args = ap.parse_args(argv)
    if args.report_only:
        print(write_report(args.out or HERE))
        return 0

    import importlib

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes.tiny() if args.tiny else Sizes()
    if args.seeds:
        sizes.seeds = tuple(int(x) for x in args.seeds.split(","))
    if args.noise:
        sizes.noise_levels = tuple(float(x) for x in args.noise.split(","))
    for item in args.set:
        try:
            sizes.override(item)
        except ValueError as exc:
            ap.error(f"--set {item}: {exc}")
    extra = "".join(
        f" {flag} {value}"
        for flag, value in (("--seeds", args.seeds), ("--noise", args.noise), ("--out", args.out))
        if value
    ) + "".join(f" --set {item}" for item in args.set)
    out = args.out or HERE
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="curate-quality-"))
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(EXPERIMENTS))
    if unknown:
        ap.error(f"--only: unknown experiment(s) {unknown}; choose from {sorted(EXPERIMENTS)}")

    failures = {}
    for n in only:
        command = (
            ".venv/bin/python benchmarks/quality/run.py "
            + ("--tiny " if args.tiny else "")
            + f"--only {n}"
            + extra
        )
        started = time.time()
        print(
            f"== experiment {n} ({'tiny' if args.tiny else 'full'}), work folder {work / f'exp{n}'}",
            flush=True,
        )
        try:
            module = importlib.import_module(EXPERIMENTS[n])
            rows: list[Row] = module.run(work / f"exp{n}", sizes, command, log=lambda m: print(m, flush=True))
        except Exception as exc:
            if not args.keep_going:
                raise
            traceback.print_exc()
            failures[n] = f"{type(exc).__name__}: {exc}"
            continue
        payload = {
            "experiment": n,
            "tiny": args.tiny,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "wall_seconds": time.time() - started,
            "machine": machine(),
            "sizes": {k: v for k, v in vars(sizes).items()},
            "rows": [r.to_dict() for r in rows],
        }
        (out / f"results-{n}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        write_report(out)
        print(f"== experiment {n} done in {time.time() - started:.0f}s", flush=True)
    write_report(out, failures)
    if failures:
        print(f"failed experiments: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
