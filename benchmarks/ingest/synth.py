"""Synthetic HH-RLHF-shaped preference JSONL whose turn structure and lengths are drawn from the real file.

Each synthetic row copies the turn count and per-turn character lengths of a
randomly drawn real HH-RLHF pair (including its rare empty final turns, which
validation quarantines) and fills the turns with words drawn from the real
text, so the bytes per row, the turns per row and the quarantine rate match
the real data while the content is new (no accidental exact duplicates).
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import orjson

from curation.ingest.readers.hh import split_transcript


def real_shapes(hh_file: Path) -> tuple[list[tuple[list[tuple[str, int]], int]], list[str]]:
    """(turn roles and lengths of the chosen transcript, length of the rejected last turn) per real row, and its words."""
    shapes, words = [], []
    with gzip.open(hh_file, "rb") as fh:
        for line in fh:
            row = orjson.loads(line)
            try:
                c = split_transcript(row["chosen"])
                r = split_transcript(row["rejected"])
            except ValueError:
                continue
            shapes.append(([(m["role"], len(m["content"])) for m in c], len(r[-1]["content"])))
            for m in c:
                words.extend(m["content"].split())
    return shapes, words


def write_synthetic(hh_file: Path, out: Path, rows: int, seed: int = 0) -> Path:
    """Write ``rows`` synthetic HH pairs to ``out`` (JSONL); returns ``out``."""
    rng = random.Random(seed)
    shapes, words = real_shapes(hh_file)
    pool = " ".join(rng.choices(words, k=4_000_000))
    n_pool = len(pool) - 20_000
    marker = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: "}

    def fill(length: int) -> str:
        start = rng.randrange(n_pool)
        return pool[start : start + length].strip() if length else ""

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # a killed run leaves no file that looks complete
    with open(tmp, "wb", buffering=1 << 22) as fh:
        for _ in range(rows):
            turns, rej_len = shapes[rng.randrange(len(shapes))]
            prefix = "".join(marker[role] + fill(n) for role, n in turns[:-1])
            last_role, last_len = turns[-1]
            chosen = prefix + marker[last_role] + fill(last_len)
            rejected = prefix + marker[last_role] + fill(rej_len)
            fh.write(orjson.dumps({"chosen": chosen, "rejected": rejected}))
            fh.write(b"\n")
    os.replace(tmp, out)
    return out
