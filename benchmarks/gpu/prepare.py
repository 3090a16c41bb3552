"""Pack what the GPU benchmarks need into ./.devpack (run here, on the CPU machine, before device_run.sh).

The GPU machine has torch, transformers, sentence-transformers, accelerate, pyarrow, scikit-learn and
xxhash, but not duckdb, polars or orjson, and the working tree that travels there is capped at 64 MiB. So
everything that needs the store is done here:

- ``minilm-fp16/``: the bundled all-MiniLM-L6-v2 with its weights stored in fp16 (45 MB instead of 87 MB);
  ``device_bench.py unpack`` turns it back into fp32 weights (``minilm/``) there, run in bf16 autocast;
- ``hh_noisy.jsonl``: the HH-RLHF harmless pairs with 20 % of labels flipped exactly as
  benchmarks/noise/bench.py flips them (same seed), as canonical records with a ``flipped`` flag;
- ``shards/``: an rm shard of all HH pairs (weight 1, no margin), as benchmarks/train_rm builds it;
- ``build/``: the sft and ranking shards of a curated build (``make demo``'s), for train_large;
- ``whl/``: wheels of orjson (the score cache needs it), and of datasets, dill, multiprocess and trl
  for the TRL comparison only.

    .venv/bin/python benchmarks/gpu/prepare.py          # then: see benchmarks/gpu/RESULTS.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
WHEELS = ["orjson==3.13.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "trl==1.16.0"]


def copy_model(src: Path, dst: Path, dtype: str) -> None:
    """A model folder copied with its floating-point weights cast to ``dtype`` ("float16", "float32")."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors"))
    to = getattr(torch, dtype)
    sd = load_file(str(src / "model.safetensors"))
    cast = {k: v.to(to).contiguous() if v.is_floating_point() else v for k, v in sd.items()}
    save_file(cast, str(dst / "model.safetensors"), metadata={"format": "pt"})


def pack_model(out: Path) -> None:
    from curation.core.models import bundled_minilm_path

    copy_model(bundled_minilm_path(), out, "float16")


def pack_noisy_pairs(data: Path, out: Path, flip: float, seed: int) -> int:
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.scoring.texts import load_records

    with gzip.open(data, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    flipped = np.random.default_rng(seed).random(len(rows)) < flip  # as benchmarks/noise/bench.py
    with tempfile.TemporaryDirectory() as tmp:
        noisy = Path(tmp) / f"hh_flip{flip}_seed{seed}.jsonl"
        with open(noisy, "w") as fh:
            for r, f in zip(rows, flipped, strict=True):
                fh.write(json.dumps({"chosen": r["rejected"], "rejected": r["chosen"]} if f else r) + "\n")
        st = Store(Path(tmp) / "store")
        ingest_paths(st, [str(noisy)], IngestOptions(reader="hh", source="hh_noisy"))
        row_of = dict(st.connect().sql("SELECT id, source_row FROM pairs").fetchall())
        records = load_records(st, "pair")
    with open(out, "w") as fh:
        for r in records:
            r["flipped"] = bool(flipped[row_of[r["id"]]])
            fh.write(json.dumps(r) + "\n")
    return len(records)


def pack_build(build: Path, out: Path) -> None:
    """The build's manifest and its sft and ranking shards (what train_large trains on)."""
    if not (build / "manifest.json").exists():
        raise SystemExit(f"{build}: no curated build there; run `make demo` first or pass --build")
    manifest = json.loads((build / "manifest.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for shard in manifest["shards"]:
        if shard["consumer"] in ("sft", "ranking"):
            (out / shard["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build / shard["path"], out / shard["path"])
    manifest["shards"] = [s for s in manifest["shards"] if s["consumer"] in ("sft", "ranking")]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"))
    ap.add_argument("--out", default=str(REPO / ".devpack"))
    ap.add_argument("--flip", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--build",
        default=str(REPO / "store" / "curated" / "demo"),
        help="a curated build (e.g. from `make demo`) whose sft and ranking shards train_large trains on",
    )
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(exist_ok=True)
    pack_model(out / "minilm-fp16")
    n = pack_noisy_pairs(Path(args.data), out / "hh_noisy.jsonl", args.flip, args.seed)
    print(f"{n} noisy pairs")
    sys.path.insert(0, str(REPO / "benchmarks" / "train_rm"))
    from bench import build_shard  # benchmarks/train_rm/bench.py

    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shard(Path(args.data).parents[1], Path(tmp), 0)
        shutil.rmtree(out / "shards", ignore_errors=True)
        shutil.copytree(shards, out / "shards")
    pack_build(Path(args.build), out / "build")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
        + ["--python-version", "3.12", "--implementation", "cp"]
        + [f"--platform={p}_x86_64" for p in ("manylinux_2_28", "manylinux_2_17", "manylinux2014")]
        + ["-d", str(out / "whl"), *WHEELS],
        check=True,
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"packed {out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
