"""Time near-duplicate marking (curation.ingest.dedup.mark_near_duplicates) on a store, every kind, median of N.

    .venv/bin/python benchmarks/curate_build/near_marks.py STORE [--repeats 3] [--hh-copies K]

With ``--hh-copies K`` a fresh store is made under STORE from the demo HH pairs plus K near-copies of each
(a word appended to every turn: the same prompt cluster and near-identical replies), so that most pairs
sit in prompt clusters and the record level has work to do. Prints the seconds per run and the counts of
records that share a prompt cluster with an earlier record, and that are near-identical to one.
Run it with another checkout first on PYTHONPATH to compare versions of the marking code.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEMO_HH = (
    Path(__file__).resolve().parents[2]
    / "curation"
    / "data"
    / "demo"
    / "hh-rlhf"
    / "harmless-base-test.jsonl.gz"
)


def _hh_store(root: Path, copies: int):
    from curation.core.store import Store
    from curation.ingest.pipeline import ingest_paths

    root.mkdir(parents=True, exist_ok=True)
    src = root / f"hh-x{copies + 1}.jsonl"
    with gzip.open(DEMO_HH, "rt") as fh, open(src, "w") as out:
        rows = [json.loads(line) for line in fh]
        for k in range(copies + 1):
            for r in rows:
                tail = f" Okay{k}." if k else ""
                out.write(json.dumps({"chosen": r["chosen"] + tail, "rejected": r["rejected"] + tail}) + "\n")
    store = Store(root / "store")
    ingest_paths(store, [str(src)])
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hh-copies", type=int, default=0)
    args = ap.parse_args()
    from curation import catalog
    from curation.core.store import Store
    from curation.ingest.dedup import mark_near_duplicates

    store = _hh_store(Path(args.store), args.hh_copies) if args.hh_copies else Store(args.store, create=False)
    times = []
    for _ in range(args.repeats):
        with store.writer_lock("bench near marks"):
            t = time.perf_counter()
            mark_near_duplicates(store, ["sft", "pair", "ranking"])
            times.append(time.perf_counter() - t)
    con = catalog.connect(store)
    cols = {r[0] for r in con.sql("DESCRIBE near_duplicates").fetchall()}
    record = (
        "count(*) FILTER (WHERE NOT record_representative)" if "record_representative" in cols else "NULL"
    )
    counts = con.sql(
        f"SELECT kind, count(*) FILTER (WHERE NOT representative), {record} FROM near_duplicates GROUP BY ALL "
        "ORDER BY kind"
    ).fetchall()
    n = {
        k: con.sql(f"SELECT count(*) FROM {v}").fetchall()[0][0]
        for k, v in (("sft", "sft"), ("pair", "pairs"), ("ranking", "rankings"))
    }
    print(f"records {n}; mark seconds {[round(x, 2) for x in times]} median {statistics.median(times):.2f}")
    print("kind, same prompt as an earlier record, near-identical to an earlier record:", counts)


if __name__ == "__main__":
    main()
