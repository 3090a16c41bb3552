"""Helpers for the scoring tests (no tests here): small real-data stores and a saved tiny reward model."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def write_subset(src: Path, dst: Path, n: int, start: int = 0) -> Path:
    """The rows [start, start + n) of a JSONL(.gz) or JSON-array file, as JSONL."""
    if src.suffix == ".gz":
        with gzip.open(src, "rt") as fh:
            rows = [json.loads(line) for line in fh]
    elif src.suffix == ".json":
        rows = json.loads(src.read_text())
    else:
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w") as fh:
        for r in rows[start : start + n]:
            fh.write(json.dumps(r) + "\n")
    return dst


def build_store(root: Path, shared: Path, hh: int = 200, alpaca: int = 0, gsm8k: int = 0, hh_start: int = 0):
    """A store with real HH-RLHF pairs (and optionally Alpaca and GSM8K SFT rows)."""
    from curation.core.store import Store
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    st = Store(root / "store")
    src = root / "src"
    if hh:
        p = write_subset(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz", src / "hh.jsonl", hh, hh_start)
        ingest_paths(st, [str(p)], IngestOptions(reader="hh", source="hh"))
    if alpaca:
        p = write_subset(shared / "llama-factory" / "alpaca_en_demo.json", src / "alpaca.jsonl", alpaca)
        ingest_paths(st, [str(p)], IngestOptions(reader="alpaca", source="alpaca"))
    if gsm8k:
        p = write_subset(shared / "gsm8k" / "test.jsonl", src / "gsm8k.jsonl", gsm8k)
        opts = IngestOptions(kind="sft", source="gsm8k", mapping={"prompt": "question", "response": "answer"})
        ingest_paths(st, [str(p)], opts)
    return st


def add_hh(st, shared: Path, tmp: Path, n: int, start: int) -> None:
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    p = write_subset(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz", tmp / f"hh_{start}.jsonl", n, start)
    ingest_paths(st, [str(p)], IngestOptions(reader="hh", source="hh"))


def save_reward_model(minilm: Path, out: Path, seed: int = 0) -> Path:
    """MiniLM with a seeded one-output score head, saved like training/rm saves a reward model."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm), num_labels=1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(out)
    return out
