"""Device script: N Ray workers on fractional GPUs against 1, with a 1B-class reward model built on the machine.

On a GPU machine (one or more GPUs; the ray extra installed), from the repository root:

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale/gpu_workers.py [--pairs 2000] [--workers 1 2 4]

Builds a 1.1B Llama-shaped sequence classifier (TinyLlama's shape, random bf16 weights, the bundled MiniLM
tokenizer; the speed does not depend on the weights' values, as in benchmarks/gpu/device_bench.py), saves
it like any reward-model folder, and runs benchmarks/scale/score_workers.py's reward_margin work with each
worker count: on one GPU, N workers share it (1/N GPU each); with G >= N GPUs each worker gets its own.
Prints the JSON rows (model-bound seconds, pairs/s, speed-up, same tables) and writes --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--rm", type=Path, default=Path("/tmp/curate_scale_rm_1b"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/curate_scale_gpu.json"))
    args = ap.parse_args()
    if not (args.rm / "config.json").exists():
        import torch

        from curation.core.models import bundled_minilm_path

        sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
        from llama_rm import build_llama_rm

        build_llama_rm(args.rm, bundled_minilm_path(), "cuda" if torch.cuda.is_available() else "cpu")
    sys.path.insert(0, str(Path(__file__).parent))
    import score_workers

    sys.argv = [
        "score_workers.py",
        "--scorer",
        "reward_margin",
        "--model",
        str(args.rm),
        "--pairs",
        str(args.pairs),
        "--max-length",
        "512",
        "--chunk",
        "256",
        "--out",
        str(args.out),
        "--workers",
        *map(str, args.workers),
    ]
    score_workers.main()


if __name__ == "__main__":
    main()
