"""Near-duplicate prompts with MinHash LSH (rensa), marked, never deleted.

Exact duplicates are handled at ingest (same content id -> the ``duplicates``
table). Here records whose *prompts* are near-identical (estimated Jaccard
similarity of word 3-gram shingles >= threshold) are grouped into clusters;
each cluster keeps one representative, the record ingested first. The result
is a table ``dedup/near_<kind>.parquet`` (id, cluster, representative,
similarity), recomputed after every ingest and exposed as the view
``near_duplicates``; curation policies decide whether to drop non-representatives.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import rensa

from curation.store import parquet_select

if TYPE_CHECKING:
    from curation.store import Store

NEAR_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("cluster", pa.string()),  # id of the cluster's representative
        pa.field("representative", pa.bool_()),
        pa.field("similarity", pa.float64()),  # estimated Jaccard to the representative
    ]
)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class MinHashParams:
    threshold: float = 0.8
    num_perm: int = 128
    shingle: int = 3
    seed: int = 7

    @property
    def bands(self) -> int:
        return lsh_bands(self.threshold, self.num_perm)


def lsh_bands(threshold: float, num_perm: int) -> int:
    """Number of bands b (rows r = num_perm // b) whose S-curve midpoint (1/b)^(1/r) is nearest the threshold,
    preferring recall (midpoint at or below the threshold). 0.8 with 128 permutations gives 16 x 8."""
    best, best_gap = 1, float("inf")
    for b in range(1, num_perm + 1):
        if num_perm % b:
            continue
        r = num_perm // b
        mid = (1.0 / b) ** (1.0 / r)
        gap = abs(mid - threshold) + (0.05 if mid > threshold else 0.0)
        if gap < best_gap:
            best, best_gap = b, gap
    return best


def shingles(text: str, n: int = 3) -> list[str]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return [" ".join(words)] if words else [text]
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def minhashes(texts: Sequence[str], params: MinHashParams) -> list[rensa.RMinHash]:
    out = []
    for t in texts:
        m = rensa.RMinHash(num_perm=params.num_perm, seed=params.seed)
        m.update(shingles(t, params.shingle))
        out.append(m)
    return out


def near_duplicate_clusters(
    texts: Sequence[str], params: MinHashParams = MinHashParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster index (the representative's position) and similarity to it, for each text.

    Items earlier in ``texts`` win as representatives. Candidate pairs from the
    LSH bands are verified with the MinHash Jaccard estimate before merging.
    """
    return cluster_minhashes(minhashes(texts, params), params)


def cluster_minhashes(
    hashes: Sequence[rensa.RMinHash], params: MinHashParams
) -> tuple[np.ndarray, np.ndarray]:
    """``near_duplicate_clusters`` from precomputed MinHashes (lets callers stream the texts)."""
    n = len(hashes)
    lsh = rensa.RMinHashLSH(threshold=params.threshold, num_perm=params.num_perm, num_bands=params.bands)
    lsh.insert_pairs(list(enumerate(hashes)))
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, cands in enumerate(lsh.query_all(hashes)):
        for j in cands:
            if j <= i:
                continue
            if hashes[i].jaccard(hashes[j]) >= params.threshold:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the earlier item stays the root
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    sim = np.array([1.0 if roots[i] == i else hashes[i].jaccard(hashes[roots[i]]) for i in range(n)])
    return roots, sim


def prompt_texts_sql(kind: str) -> str:
    """SQL giving (id, prompt text) in ingest order for a kind's view."""
    view = {"sft": "sft", "pair": "pairs", "ranking": "rankings"}[kind]
    if kind == "sft":
        expr = "list_aggregate(list_transform(list_filter(messages, lambda m: m.role <> 'assistant'), lambda m: m.content), 'string_agg', '\n')"
    else:
        expr = "list_aggregate(list_transform(prompt, lambda m: m.content), 'string_agg', '\n')"
    return (
        f"SELECT v.id, {expr} AS text FROM {view} v JOIN ingest_runs r "
        "ON v.source_file = r.source_file AND v.ingest_run = r.ingest_run "
        "ORDER BY r.started_at, v.source_file, v.source_row, v.id"
    )


def mark_near_duplicates(
    store: Store, kinds: Sequence[str] = ("sft", "pair", "ranking"), params: MinHashParams = MinHashParams()
) -> dict[str, int]:
    """Recompute the near-duplicate table of each kind; returns the number of non-representative records."""
    counts: dict[str, int] = {}
    con = store.connect()
    try:
        for kind in kinds:
            ids: list[str] = []
            hashes: list[rensa.RMinHash] = []
            # stream the prompt texts: only ids and 128-value signatures stay in memory
            for batch in con.sql(prompt_texts_sql(kind)).to_arrow_reader(batch_size=50_000):
                ids.extend(batch.column("id").to_pylist())
                hashes.extend(minhashes([t or "" for t in batch.column("text").to_pylist()], params))
            if hashes:
                roots, sim = cluster_minhashes(hashes, params)
            else:
                roots, sim = np.array([], dtype=np.int64), np.array([])
            sizes = np.bincount(roots, minlength=len(ids)) if len(ids) else np.array([])
            keep = [i for i in range(len(ids)) if sizes[roots[i]] > 1]
            table = pa.table(
                {
                    "id": [ids[i] for i in keep],
                    "kind": [kind] * len(keep),
                    "cluster": [ids[roots[i]] for i in keep],
                    "representative": [bool(roots[i] == i) for i in keep],
                    "similarity": [float(sim[i]) for i in keep],
                },
                schema=NEAR_SCHEMA,
            )
            store.write_parquet(table, f"dedup/near_{kind}.parquet")
            counts[kind] = sum(1 for i in keep if roots[i] != i)
    finally:
        con.close()
    return counts


def near_dup_views(store: Store) -> dict[str, str]:
    return {"near_duplicates": parquet_select(store.root, "dedup/near_*.parquet", NEAR_SCHEMA)}
