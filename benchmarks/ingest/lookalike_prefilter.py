"""Cost of the look-alike check of pairs on the Arrow path (docs/reliability.md, "Round three: data").

The canonical last responses of HH-RLHF's 2,312 test pairs, repeated ``--copies`` times with a suffix each,
are compared three ways: exact lengths (the check before round three), the visible-character prefilter
(``columnar._visible``, what runs now on every pair) and the full ``validate.text_key`` of every response in
polars (what the prefilter spares). Prints seconds, best of ``--repeat``.

    PYTHONPATH=$PWD python benchmarks/ingest/lookalike_prefilter.py --copies 15
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import polars as pl

from curation.ingest.columnar import _visible
from curation.ingest.readers.base import PY_WHITESPACE, RowError
from curation.ingest.readers.hh import HHReader
from curation.ingest.validate import INVISIBLE

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _key(texts: pl.Expr) -> pl.Expr:
    spaces = f"[{PY_WHITESPACE}]+"
    return (
        texts.str.replace_all(f"[{INVISIBLE}]", "")
        .str.replace_all(spaces, " ")
        .str.strip_chars(PY_WHITESPACE)
        .str.normalize("NFC")
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    chosen, rejected = [], []
    with gzip.open(SHARED / "hh-rlhf/harmless-base-test.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for line in fh]
    for k in range(args.copies):
        for row in rows:
            try:
                (rec,) = HHReader().convert(row)
            except RowError:
                continue
            chosen.append(rec["chosen"][-1]["content"] + f" ({k})")
            rejected.append(rec["rejected"][-1]["content"] + f" ({k})")
    frame = pl.DataFrame({"c": chosen, "r": rejected})
    ways = {
        "exact lengths (before)": pl.col("c").str.len_chars() == pl.col("r").str.len_chars(),
        "visible characters (now)": _visible(pl.col("c")) == _visible(pl.col("r")),
        "text_key of every response": _key(pl.col("c")) == _key(pl.col("r")),
    }
    print(
        f"{len(frame)} pairs, {(frame['c'].str.len_bytes().sum() + frame['r'].str.len_bytes().sum()) / 1e6:.1f} MB"
    )
    for name, expr in ways.items():
        best = min(_timed(frame, expr) for _ in range(args.repeat))
        print(f"{name}: {best:.3f} s")


def _timed(frame: pl.DataFrame, expr: pl.Expr) -> float:
    start = time.perf_counter()
    frame.select(expr)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
