"""Small curated shards built from real data, for trainer tests (a stand-in for curation/builds/build.py).

``build_shards(store, out, ...)`` reads the ``sft``, ``pairs`` and ``rankings`` views of an ingested
store, adds the shard columns of schemas/shards.py (deterministic but varied weights, margins, soft
labels, flips and groups so every code path is exercised), splits train/eval by a hash of the id and
writes Parquet files plus a manifest.json with real sha256s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import catalog
from curation.core.hashing import file_sha256
from schemas.shards import SHARD_SCHEMA_VERSION, SHARD_SCHEMAS


def ingest_real(store, shared: Path) -> None:
    """Ingest the real files the trainer tests use (HH pairs, Alpaca SFT, GSM8K and OASST rankings)."""
    from curation.ingest.pipeline import ingest_paths

    ingest_paths(
        store,
        [
            str(shared / "hh-rlhf" / "harmless-base-test.jsonl.gz"),
            str(shared / "llama-factory" / "alpaca_en_demo.json"),
            str(shared / "gsm8k" / "example_model_solutions.jsonl"),
            str(shared / "oasst" / "en_100_tree.jsonl"),
        ],
    )


def _bucket(record_id: str, n: int) -> int:
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:8], 16) % n


def _rm_rows(con, limit: int | None) -> list[dict]:
    rows = con.sql(
        "select id, source, prompt, chosen, rejected from pairs order by id"
        + (f" limit {limit}" if limit else "")
    ).to_arrow_table()
    out = []
    for r in rows.to_pylist():
        b = _bucket(r["id"], 10)
        flipped = b == 0
        chosen, rejected = (r["rejected"], r["chosen"]) if flipped else (r["chosen"], r["rejected"])
        longer = len(chosen[-1]["content"]) > len(rejected[-1]["content"])
        out.append(
            {
                "id": r["id"],
                "source": r["source"],
                "prompt": r["prompt"],
                "chosen": chosen,
                "rejected": rejected,
                "weight": 0.5 if b == 1 else 1.0,
                "margin": 0.0 if b < 5 else 0.1 * (b - 4),
                "soft_label": 0.1 if b in (0, 2) else 0.0,
                "flipped": flipped,
                "group": int(longer),
            }
        )
    return out


def _sft_rows(con, limit: int | None) -> list[dict]:
    rows = con.sql("select id, source, messages from sft order by id" + (f" limit {limit}" if limit else ""))
    return [
        {**r, "weight": 1.0 if _bucket(r["id"], 4) else 0.5, "label_smoothing": 0.05 * _bucket(r["id"], 5)}
        for r in rows.to_arrow_table().to_pylist()
    ]


def _ranking_rows(con, limit: int | None) -> list[dict]:
    rows = con.sql(
        "select id, source, prompt, candidates from rankings order by id"
        + (f" limit {limit}" if limit else "")
    )
    out = []
    for r in rows.to_arrow_table().to_pylist():
        cands = r["candidates"]
        out.append(
            {
                "id": r["id"],
                "source": r["source"],
                "prompt": r["prompt"],
                "candidates": [c["content"] for c in cands],
                "grades": [c["grade"] for c in cands],
                "is_reference": [bool(c["is_reference"]) for c in cands],
                "weight": 1.0,
            }
        )
    return out


def write_shards(
    out: Path,
    rows: dict[str, list[dict]],
    eval_every: int = 5,
    name: str = "test",
    split_key: Callable[[dict], str] | None = None,
) -> Path:
    """Write ``rows[consumer]`` as train/eval shards (1 in ``eval_every`` rows to eval, by a hash of the id
    or of ``split_key(row)``, e.g. the prompt so a prompt is never in both splits) and the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], {}
    for consumer, items in rows.items():
        schema = SHARD_SCHEMAS[consumer]
        splits = {"train": [], "eval": []}
        for r in items:
            key = split_key(r) if split_key else r["id"]
            splits["eval" if _bucket(key + "split", eval_every) == 0 else "train"].append(r)
        counts[consumer] = {}
        for split, part in splits.items():
            if not part:
                continue
            rel = f"{consumer}/{split}-00000.parquet"
            (out / consumer).mkdir(exist_ok=True)
            pq.write_table(pa.Table.from_pylist(part, schema=schema), out / rel)
            shards.append(
                {
                    "consumer": consumer,
                    "split": split,
                    "path": rel,
                    "rows": len(part),
                    "sha256": file_sha256(out / rel),
                }
            )
            by_source: dict[str, int] = {}
            for r in part:
                by_source[r["source"]] = by_source.get(r["source"], 0) + 1
            counts[consumer][split] = by_source
    manifest = {
        "schema_version": SHARD_SCHEMA_VERSION,
        "name": name,
        "policy_sha256": "0" * 64,
        "lineage_sha256": "0" * 64,
        "scorers": {},
        "inputs": [],
        "shards": shards,
        "counts": counts,
        "accounting": {},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def build_shards(
    store,
    out: Path,
    consumers: tuple[str, ...] = ("sft", "rm", "ranking"),
    limit: int | None = None,
    eval_every: int = 5,
) -> Path:
    """Shards for ``consumers`` from the store's views (first ``limit`` records by id, if given)."""
    con = catalog.connect(store)
    makers = {"sft": _sft_rows, "rm": _rm_rows, "ranking": _ranking_rows}
    return write_shards(out, {c: makers[c](con, limit) for c in consumers}, eval_every=eval_every)


@pytest.fixture(scope="session")
def real_store(tmp_path_factory, shared_data):
    """A store with the real HH pairs, Alpaca SFT and GSM8K/OASST rankings ingested (once per session)."""
    from curation.core.store import Store

    store = Store(tmp_path_factory.mktemp("real_store") / "store")
    ingest_real(store, shared_data)
    return store


@pytest.fixture(scope="session")
def real_shards(tmp_path_factory, real_store) -> Path:
    """sft, rm and ranking shards (train + eval) built from ``real_store``."""
    return build_shards(real_store, tmp_path_factory.mktemp("shards") / "build")
