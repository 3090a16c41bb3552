"""Semantic near-duplicates: prompts whose embeddings have cosine >= threshold, clustered.

Complements the lexical MinHash clusters of curation/ingest/dedup.py (which catch copies
and light edits) with paraphrases. Similarities are computed block by block
(``block`` x ``block`` tiles of the normalised embedding matrix), so memory stays
O(block^2 + n * dim) however many records there are. Candidate pairs are merged
with union-find; each cluster's representative is its smallest record id (a
deterministic choice); only records in clusters of two or more are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.options import option
from curation.scoring.base import ScoreSummary, add_stats
from curation.scoring.cache import ResultSpec, ids_fingerprint, result_done
from curation.scoring.contract import Outcome, Scorer, ScoreRun
from curation.scoring.embeddings import ALL_KINDS, EmbeddingsConfig, prompt_texts
from curation.scoring.schemas import SEMANTIC_SCHEMA

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "semantic_dedup"
VERSION = "1"


def near_pairs(emb: np.ndarray, threshold: float, block: int = 2048) -> Sequence[tuple[int, int, float]]:
    """All (i, j, cosine) with i < j and cosine >= threshold, computed in bounded tiles."""
    out: list[tuple[int, int, float]] = []
    n = len(emb)
    for a in range(0, n, block):
        ea = emb[a : a + block]
        for b in range(a, n, block):
            sims = ea @ emb[b : b + block].T
            ii, jj = np.nonzero(sims >= threshold)
            for i, j in zip(ii, jj, strict=True):
                gi, gj = a + int(i), b + int(j)
                if gi < gj:
                    out.append((gi, gj, float(sims[i, j])))
    return out


def clusters(n: int, pairs: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Union-find roots (the smallest index of each component)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, j, _ in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


@dataclass
class SemanticDedupConfig(EmbeddingsConfig):
    threshold: float = option(0.95, "Near-duplicates: cosine of the prompts' embeddings >= threshold.")
    block: int = option(2048, "Tile size of the similarity blocks (memory ~block^2).")


def kind_clusters(kind: str, recs: list[dict], vecs: np.ndarray, threshold: float, block: int) -> pa.Table:
    """The rows of one kind's records in clusters of two or more (see the module docstring)."""
    pairs = near_pairs(vecs, threshold, block)
    roots = clusters(len(recs), pairs)
    best = np.ones(len(recs))
    for i, j, s in pairs:  # similarity to the representative where it is a direct neighbour
        if roots[j] == i:
            best[j] = s
    sizes = np.bincount(roots, minlength=len(recs))
    keep = [i for i in range(len(recs)) if sizes[roots[i]] > 1]
    for i in keep:
        if roots[i] != i and best[i] == 1.0:
            best[i] = float(vecs[i] @ vecs[roots[i]])
    columns = {
        "id": [recs[i]["id"] for i in keep],
        "kind": [kind] * len(keep),
        "sem_cluster": [recs[roots[i]]["id"] for i in keep],
        "sem_representative": [bool(roots[i] == i) for i in keep],
        "sem_similarity": [float(best[i]) for i in keep],
    }
    return pa.table(columns, schema=SEMANTIC_SCHEMA)


class SemanticDedup(Scorer):
    """Cluster semantically near-duplicate prompts of each kind (cosine of MiniLM embeddings >= threshold)."""

    name = NAME
    version = VERSION
    kinds = ALL_KINDS
    Config = SemanticDedupConfig
    result_schema = SEMANTIC_SCHEMA
    views = {"scored_pairs": "pair", "scored_sft": "sft", "scored_rankings": "ranking"}
    view_columns = ("sem_cluster", "sem_representative")
    whole_set = True
    order = 50

    def run(self, store: Store, *, progress: bool = True) -> ScoreSummary:
        """Over every record of the kinds (no ``where``); the embeddings cache keeps its own chunking."""
        return super().run(store, progress=progress)

    def score(self, run: ScoreRun) -> Outcome:
        cfg = self.config
        emb = cfg.embedder(run.store, run.progress)
        all_ids = [f"{k}:{r['id']}" for k, recs in run.by_kind.items() for r in recs]
        params = {"threshold": cfg.threshold, "kinds": list(self.load_kinds()), "embeddings": emb.cache.key}
        spec = ResultSpec(NAME, VERSION, emb.fingerprint, params, ids_fingerprint(all_ids))
        if result_done(run.store, spec):
            return spec, None, {}
        parts, report = [], {}
        for kind, recs in run.by_kind.items():
            vecs = emb.embed(prompt_texts(kind, recs), f"{kind} prompts")
            parts.append(part := kind_clusters(kind, recs, vecs, cfg.threshold, cfg.block))
            report[f"{kind}_near_duplicates"] = sum(
                not r for r in part.column("sem_representative").to_pylist()
            )
        add_stats(run.summary, emb.stats)
        return spec, pa.concat_tables(parts) if parts else SEMANTIC_SCHEMA.empty_table(), report


def run(store: Store, *, progress: bool = True, **config: Any) -> ScoreSummary:
    """Cluster near-duplicate prompts of each kind (``SemanticDedupConfig`` fields)."""
    return SemanticDedup.run_with(store, progress=progress, **config)
