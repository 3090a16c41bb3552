"""Distinct batch shapes and padded tokens of device_bench.py's train_shapes epochs, per width multiple.

CPU only, no model: tokenises the same rows as ``device_bench.py train_large --sft-rows 512 --groups 128``
(the pack's build, the MiniLM vocabulary with [CLS]/[SEP] as bos/eos), batches them with the trainers'
length-grouped sampler and counts the (rows, width) shapes that each ``pad_to_multiple_of`` leaves.

    .venv/bin/python benchmarks/gpu/shapes.py --pack .devpack
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> None:
    from transformers import AutoTokenizer

    from curation.core.padding import padded_width
    from training import rescue, sft
    from training.common import SortedBucketSampler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", default=str(REPO / ".devpack"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    args = ap.parse_args()
    pack = Path(args.pack)
    tok = AutoTokenizer.from_pretrained(str(pack / "minilm-fp16"))
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token  # as device_bench.train_large
    shards = str(pack / "build")
    runs = (("sft", sft.SFTConfig, 512), ("rescue", rescue.RescueConfig, 128))
    for name, config_cls, limit in runs:
        cfg = config_cls(
            output_dir="/tmp/curate_shapes",
            shards=shards,
            model=str(pack / "minilm-fp16"),
            max_length=args.max_length,
            per_device_train_batch_size=args.batch,
            use_cpu=True,
        )
        if name == "sft":
            data, _ = sft.load_sft(shards, "train", tok, cfg, limit)
            widths = [sum(len(s["input_ids"]) for s in row["samples"]) for row in data.items]
            rows = [1] * len(data)
        else:
            data, _, _ = rescue.load_groups(shards, "train", tok, cfg, limit)
            widths = [max(len(s["input_ids"]) for s in g["seqs"]) for g in data.items]
            rows = [len(g["seqs"]) for g in data.items]
        order = list(SortedBucketSampler(data.lengths, args.batch, seed=cfg.seed))
        batches = [order[i : i + args.batch] for i in range(0, len(order), args.batch)]
        for multiple in (1, 8, 64):
            shapes = [
                (sum(rows[i] for i in b), padded_width(max(widths[i] for i in b), multiple, args.max_length))
                for b in batches
            ]
            print(
                f"{name}: multiple {multiple:>2}: {len(batches)} batches, {len(set(shapes))} distinct shapes, "
                f"{sum(n * w for n, w in shapes):,} padded tokens"
            )


if __name__ == "__main__":
    main()
