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
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER
from curation.scoring.base import ScoreSummary, Timer
from curation.scoring.cache import ResultSpec, activate, commit_result, ids_fingerprint, result_done
from curation.scoring.contract import Scorer
from curation.scoring.embeddings import Embedder, prompt_texts
from curation.scoring.schemas import SEMANTIC_SCHEMA
from curation.scoring.texts import load_records

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


def run(
    store: Store,
    *,
    kinds: Sequence[str] = ("pair", "sft", "ranking"),
    threshold: float = 0.95,
    model: str = DEFAULT_ENCODER,
    block: int = 2048,
    device: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    allow_network: bool = False,
) -> ScoreSummary:
    """Cluster semantically near-duplicate prompts of each kind (cosine of MiniLM embeddings >= threshold)."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",")]
    with Timer() as t, store.writer_lock("score semantic_dedup"):
        emb = Embedder(
            store,
            model,
            device=device,
            progress=progress,
            trust_remote_code=trust_remote_code,
            allow_network=allow_network,
        )
        per_kind = {k: load_records(store, k) for k in kinds}
        all_ids = [f"{k}:{r['id']}" for k, recs in per_kind.items() for r in recs]
        params = {"threshold": threshold, "kinds": list(kinds), "embeddings": emb.cache.key}
        spec = ResultSpec(NAME, VERSION, emb.fingerprint, params, ids_fingerprint(all_ids))
        report: dict[str, int] = {}
        if result_done(store, spec):
            activate(store, NAME, spec.key)
            skipped = True
        else:
            skipped = False
            parts = []
            for kind, recs in per_kind.items():
                vecs = emb.embed(prompt_texts(kind, recs), f"{kind} prompts")
                pairs = near_pairs(vecs, threshold, block) if len(recs) else []
                roots = clusters(len(recs), pairs)
                best = np.ones(len(recs))
                for i, j, s in pairs:  # similarity to the representative where it is a direct neighbour
                    if roots[j] == i:
                        best[j] = s
                sizes = np.bincount(roots, minlength=len(recs)) if len(recs) else np.zeros(0, int)
                keep = [i for i in range(len(recs)) if sizes[roots[i]] > 1]
                if len(recs):
                    for i in keep:
                        if roots[i] != i and best[i] == 1.0:
                            best[i] = float(vecs[i] @ vecs[roots[i]])
                parts.append(
                    pa.table(
                        {
                            "id": [recs[i]["id"] for i in keep],
                            "kind": [kind] * len(keep),
                            "sem_cluster": [recs[roots[i]]["id"] for i in keep],
                            "sem_representative": [bool(roots[i] == i) for i in keep],
                            "sem_similarity": [float(best[i]) for i in keep],
                        },
                        schema=SEMANTIC_SCHEMA,
                    )
                )
                report[f"{kind}_near_duplicates"] = sum(1 for i in keep if roots[i] != i)
            table = pa.concat_tables(parts) if parts else SEMANTIC_SCHEMA.empty_table()
            commit_result(store, spec, table, report=report)
    return ScoreSummary(
        NAME,
        spec.key,
        len(all_ids),
        cached=emb.stats.cached,
        computed=emb.stats.computed,
        skipped=skipped,
        seconds=t.seconds,
        report=report,
    )


class SemanticDedup(Scorer):
    """semantic_dedup in the registry (clustering over the whole set, in ``run``)."""

    name = NAME
    version = VERSION
    kinds = ("pair", "sft", "ranking")
    result_schema = SEMANTIC_SCHEMA
    views = {"scored_pairs": "pair", "scored_sft": "sft", "scored_rankings": "ranking"}
    view_columns = ("sem_cluster", "sem_representative")
    whole_set = True
    order = 50
    entry = staticmethod(run)
