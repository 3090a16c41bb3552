"""spurious_groups: interpretable bias features, embedding clusters and Q-Diversity pseudo-groups (methods.md 6).

Per pair:
- ``feat_*``: length bucket of the longer response, sign of the length difference, refusal
  phrases, lists/markdown, word overlap with the last user turn (each for chosen and rejected),
  source dataset, and the k-means cluster of the prompt embedding;
- ``feat_qdiv`` (z): a Q-Diversity pseudo-attribute from a 2-way head g on frozen embeddings
  (e(chosen) - e(rejected), standardised). g plays the max side of the min-max game against the
  preference model: it is trained to put high-loss pairs in group 1 and low-loss pairs in group 0
  (maximising the gap of q-weighted mean losses), while the paper's regulariser
  L_z = KL(p(y) || p^(y | z=1)) + KL(p(y) || p^(y | z=0)) keeps both pseudo-groups' label
  distribution equal to the overall one, so z cannot just copy y. The loss per pair is
  softplus(-margin / std(margin)) from the active reward_margin result, or, before that exists,
  from a quick out-of-fold logistic preference head on the same embeddings.
- ``group_id`` = 2 y + z with y = chosen is longer (the bias feature the label may hide behind);
  ``group_weight`` = N / (G n_g), capped at ``max_weight`` (5) and rescaled to mean 1: every non-empty
  group carries the same total weight unless it is so small that its pairs would pass the cap.

The group table is the ``score_groups`` view (size, mean margin, share of flagged pairs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER
from curation.core.options import option
from curation.scoring.base import ScoreSummary, add_stats
from curation.scoring.cache import ResultSpec, active_meta, active_table, ids_fingerprint, result_done
from curation.scoring.contract import Outcome, Scorer, ScoreRun
from curation.scoring.schemas import SPURIOUS_SCHEMA
from curation.scoring.texts import last_user_turn, response_text

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "spurious_groups"
VERSION = "2"  # 2: group weights capped (max_weight)
LEN_EDGES = (64, 128, 256)
_WORDS = re.compile(r"\w+")


def _overlap(q: str, r: str) -> float:
    a, b = set(_WORDS.findall(q.lower())), set(_WORDS.findall(r.lower()))
    return len(a & b) / max(1, len(a | b))


def _kl(p, q):
    import torch

    return (p * (torch.log(p + 1e-8) - torch.log(q + 1e-8))).sum()


def qdiv_head(
    h: np.ndarray, y: np.ndarray, loss: np.ndarray, kl_weight: float = 1.0, steps: int = 300, seed: int = 0
) -> np.ndarray:
    """Pseudo-attribute z in {0, 1} per sample from a linear 2-way head on ``h`` (see module doc)."""
    import torch

    torch.manual_seed(seed)
    x = torch.as_tensor((h - h.mean(0)) / (h.std(0) + 1e-6), dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    lt = torch.as_tensor((loss - loss.mean()) / (loss.std() + 1e-8), dtype=torch.float32)
    classes = int(yt.max()) + 1 if len(yt) else 1
    py = torch.bincount(yt, minlength=classes).float() / len(yt)
    onehot = torch.nn.functional.one_hot(yt, classes).float()
    g = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(g.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            q = torch.softmax(g(x), dim=1)[:, 1]
            q1, q0 = q.sum() + 1e-8, (1 - q).sum() + 1e-8
            gap = (q * lt).sum() / q1 - ((1 - q) * lt).sum() / q0
            p1 = (onehot * q[:, None]).sum(0) / q1
            p0 = (onehot * (1 - q)[:, None]).sum(0) / q0
            objective = -gap + kl_weight * (_kl(py, p1) + _kl(py, p0))
            opt.zero_grad()
            objective.backward()
            opt.step()
    with torch.inference_mode():
        return (torch.softmax(g(x), dim=1)[:, 1] > 0.5).numpy().astype(np.int32)


def balanced_weights(groups: np.ndarray, max_weight: float = 5.0) -> np.ndarray:
    """Group-balanced weights, mean 1: N / (G n_g) (equal total weight per non-empty group), capped at
    ``max_weight`` and rescaled until the mean is 1 again. Without the cap a group of one pair among
    thousands would carry a G-th of all the weight on that single pair (the demo data had two such
    pairs at weight 650 each); capped, a tiny group is up-weighted, never made to dominate."""
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    w = len(groups) / (len(uniq) * counts[inv].astype(np.float64))
    if max_weight < 1.0:
        raise ValueError(f"max_weight {max_weight} must be >= 1 (the mean weight)")
    for _ in range(100):
        w = np.minimum(w, max_weight)
        if abs(w.mean() - 1.0) <= 1e-9:
            break
        free = w < max_weight  # only uncapped samples are rescaled
        w[free] *= (len(w) - max_weight * (~free).sum()) / w[free].sum()
    return w


@dataclass
class SpuriousGroupsConfig:
    clusters: int = option(8, "k-means clusters of the prompt embeddings (feat_emb_cluster).")
    kl_weight: float = option(1.0, "Weight of Q-Diversity's label-balance term L_z (methods.md 6).")
    steps: int = option(300, "Adam steps of the Q-Diversity head g.")
    max_weight: float = option(5.0, "Cap of a pair's group weight (>= 1; the weights keep mean 1).")
    seed: int = option(0, "Seed of k-means, the quick preference head and the Q-Diversity head.")
    encoder: str = option(DEFAULT_ENCODER, "Encoder of the prompt and response embeddings.")
    tokenizer: str = option(DEFAULT_ENCODER, "Tokenizer of the length features (length_bias's cache).")
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    trust_remote_code: bool = option(False, "Allow the models' own code.")
    allow_network: bool = option(False, "Let hub ids be downloaded.")


class SpuriousGroups(Scorer):
    """spurious_groups: embeddings and token lengths through the caches, then clustering and Q-Diversity
    over the whole set (``score``)."""

    name = NAME
    version = VERSION
    kinds = ("pair",)
    result_schema = SPURIOUS_SCHEMA
    views = {"scored_pairs": None}
    contract_columns = ("group_id", "group_weight")
    whole_set = True
    order = 30
    Config = SpuriousGroupsConfig
    chunk_size = 1024  # texts per embedding cache chunk (Embedder's default)

    def score(self, run: ScoreRun) -> Outcome | None:
        """Bias features, clusters, Q-Diversity pseudo-groups and group weights of every pair (``chunk_size``:
        texts per embedding cache chunk)."""
        from sklearn.cluster import KMeans

        from curation.scoring.crossfit import _LIST, _REFUSAL, crossfit_rewards
        from curation.scoring.embeddings import Embedder, pair_response_texts, prompt_texts
        from curation.scoring.length_bias import pair_lengths
        from schemas.ids import text_id

        c, records = self.config, run.by_kind["pair"]
        if not records:  # nothing to score is not an error (a store may hold other kinds only)
            run.summary.skipped, run.summary.report = True, {"note": "no pairs to score"}
            return None
        ids, size = [r["id"] for r in records], run.chunk_size or self.chunk_size
        access = {k: getattr(c, k) for k in ("trust_remote_code", "allow_network")}
        emb = Embedder(
            run.store, c.encoder, device=c.device, progress=run.progress, chunk_size=size, **access
        )
        rm_meta = active_meta(run.store, "reward_margin")
        keep = ("clusters", "kl_weight", "steps", "max_weight", "seed", "tokenizer")
        params = {k: getattr(c, k) for k in keep} | {"embeddings": emb.cache.key}
        params["reward_margin"] = rm_meta["key"] if rm_meta else None
        spec = ResultSpec(NAME, VERSION, emb.fingerprint, params, ids_fingerprint(ids))
        if result_done(run.store, spec):  # clustering and the Q-Diversity head are not run again
            run.summary.cached = len(ids)
            return spec, None, {}
        lengths, stats, _ = pair_lengths(run.store, records, c.tokenizer, run.progress, **access)
        add_stats(run.summary, stats)
        lc = lengths.column("len_chosen").to_numpy().astype(np.int64)
        lr = lengths.column("len_rejected").to_numpy().astype(np.int64)
        prompts = emb.embed(prompt_texts("pair", records), "pair prompts")
        tc, tr = pair_response_texts(records)
        resp = emb.embed(tc + tr, "pair responses")
        add_stats(run.summary, emb.stats)
        n = len(records)
        diff = resp[:n] - resp[n:]
        k = max(1, min(c.clusters, n))
        cluster = KMeans(n_clusters=k, n_init=4, random_state=c.seed).fit_predict(prompts).astype(np.int32)
        # per-pair loss of the preference model
        margin = None
        if rm_meta:
            rm = active_table(run.store, "reward_margin")
            mp = dict(zip(rm.column("id").to_pylist(), rm.column("margin").to_pylist(), strict=True))
            margin = np.array([mp.get(i, np.nan) for i in ids], dtype=np.float64)
            if np.isnan(margin).any():
                margin = None  # stale result: fall back to the quick head below
        loss_source = "reward_margin"
        if margin is None:
            loss_source = "quick-crossfit-logistic"
            keys = [text_id(last_user_turn(r["prompt"])) for r in records]
            folds = min(5, max(2, n // 20))
            rc, rr = crossfit_rewards(
                resp[:n], resp[n:], keys, folds=folds, repeats=1, head="logistic", seed=c.seed
            )
            margin = (rc - rr)[:, 0]
        loss = np.logaddexp(0.0, -margin / (np.nanstd(margin) + 1e-8))
        y = (lc > lr).astype(np.int64)
        z = qdiv_head(diff, y, loss, c.kl_weight, c.steps, c.seed)
        group = (2 * y + z).astype(np.int32)
        weights = balanced_weights(group, c.max_weight)
        qs = [last_user_turn(r["prompt"]) for r in records]
        bucket = np.searchsorted(LEN_EDGES, np.maximum(lc, lr), side="right").astype(np.int32)
        ch = [response_text(r["chosen"]) for r in records]
        rj = [response_text(r["rejected"]) for r in records]
        table = pa.table(
            {
                "id": ids,
                "group_id": group,
                "group_weight": weights,
                "feat_len_bucket": bucket,
                "feat_len_sign": np.sign(lc - lr).astype(np.int32),
                "feat_refusal_chosen": [bool(_REFUSAL.search(s)) for s in ch],
                "feat_refusal_rejected": [bool(_REFUSAL.search(s)) for s in rj],
                "feat_list_chosen": [bool(_LIST.search(s)) for s in ch],
                "feat_list_rejected": [bool(_LIST.search(s)) for s in rj],
                "feat_overlap_chosen": [_overlap(q, s) for q, s in zip(qs, ch, strict=True)],
                "feat_overlap_rejected": [_overlap(q, s) for q, s in zip(qs, rj, strict=True)],
                "feat_source": [r["source"] for r in records],
                "feat_emb_cluster": cluster,
                "feat_qdiv": z,
            },
            schema=SPURIOUS_SCHEMA,
        )
        report = {"pairs": n, "groups": int(len(np.unique(group))), "loss_source": loss_source}
        for g in np.unique(group):
            m = group == g
            report[f"group{g}_size"] = int(m.sum())
            report[f"group{g}_mean_loss"] = float(loss[m].mean())
        return spec, table, report

    @classmethod
    def extra_views(cls) -> dict[str, str]:
        return {
            "score_groups": (
                "SELECT group_id, count(*) AS size, avg(margin) AS mean_margin, "
                "avg(CASE WHEN quality_class IS NULL THEN NULL WHEN quality_class <> 'clean' THEN 1.0 "
                "ELSE 0.0 END) AS flagged_share, avg(CAST(chosen_longer AS DOUBLE)) AS chosen_longer_share, "
                "any_value(group_weight) AS group_weight "
                "FROM scored_pairs WHERE group_id IS NOT NULL GROUP BY group_id ORDER BY group_id"
            )
        }


def run(store: Store, *, where: str | None = None, progress: bool = True, **config: Any) -> ScoreSummary:
    """Compute bias features, clusters, Q-Diversity pseudo-groups and group weights for every pair
    (``SpuriousGroupsConfig`` fields, and ``chunk_size``)."""
    return SpuriousGroups.run_with(store, where=where, progress=progress, **config)
