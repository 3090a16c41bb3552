"""length_bias: token lengths per pair and the dataset-level length report (methods.md section 5).

Per pair: len_prompt, len_chosen, len_rejected (tokens of the given tokenizer, default the
bundled MiniLM's), len_diff = chosen - rejected, chosen_longer. The view adds
``length_explained``: the chosen response is much longer (len_chosen >= ratio x len_rejected
and len_diff >= min_diff tokens) and the preference is weak (quality_class is not 'clean' once
reward_margin has run; by length alone before that).

Report: P(chosen longer); the AUC of the length difference as a predictor of the label
(= P(diff > 0) + P(diff = 0) / 2, since each pair read both ways is one positive and one
negative with opposite scores); Spearman(reward, length) over all responses once rewards exist.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER, ModelSpec
from curation.scoring.base import ScoreSummary, Timer, add_stats
from curation.scoring.cache import (
    CacheSpec,
    ResultSpec,
    activate,
    cached_compute,
    commit_result,
    ids_fingerprint,
    result_done,
)
from curation.scoring.schemas import LENGTH_SCHEMA
from curation.scoring.texts import load_records, plain_render, response_text

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "length_bias"
VERSION = "1"
DEFAULTS = {"ratio": 1.5, "min_diff": 16}


def pair_lengths(
    store: Store, records: list[dict], tokenizer: str = DEFAULT_ENCODER, progress: bool = True, **spec_kw: Any
):
    """(table aligned with records, CacheStats): token lengths of prompt, chosen and rejected."""
    from curation.scoring.runner import TokenCounter

    counter = TokenCounter(ModelSpec(tokenizer, **spec_kw))
    spec = CacheSpec("token_lengths", VERSION, counter.fingerprint, {"render": "plain"})

    def compute(pos: np.ndarray) -> pa.Table:
        recs = [records[i] for i in pos]
        lp = counter.count([plain_render(r["prompt"]) for r in recs])
        lc = counter.count([response_text(r["chosen"]) for r in recs])
        lr = counter.count([response_text(r["rejected"]) for r in recs])
        return pa.table({"len_prompt": lp, "len_chosen": lc, "len_rejected": lr})

    schema = LENGTH_SCHEMA.remove(LENGTH_SCHEMA.get_field_index("len_diff"))
    schema = schema.remove(schema.get_field_index("chosen_longer"))
    ids = [r["id"] for r in records]
    return cached_compute(
        store, spec, ids, compute, schema=schema, chunk_size=4096, progress=progress, desc="token lengths"
    ) + (counter.fingerprint,)


def run(
    store: Store,
    *,
    tokenizer: str = DEFAULT_ENCODER,
    ratio: float = DEFAULTS["ratio"],
    min_diff: int = DEFAULTS["min_diff"],
    where: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    allow_network: bool = False,
) -> ScoreSummary:
    """Score token lengths of every pair and write the length_bias result."""
    with Timer() as t, store.writer_lock("score length_bias"):
        records = load_records(store, "pair", where)
        ids = [r["id"] for r in records]
        lengths, stats, fp = pair_lengths(
            store,
            records,
            tokenizer,
            progress,
            trust_remote_code=trust_remote_code,
            allow_network=allow_network,
        )
        params = {"tokenizer": tokenizer, "ratio": ratio, "min_diff": min_diff}
        spec = ResultSpec(NAME, VERSION, fp, params, ids_fingerprint(ids))
        skipped = result_done(store, spec)
        lc = np.asarray(lengths.column("len_chosen").to_numpy(), dtype=np.int64)
        lr = np.asarray(lengths.column("len_rejected").to_numpy(), dtype=np.int64)
        table = pa.table(
            {
                "id": lengths.column("id"),
                "len_prompt": lengths.column("len_prompt"),
                "len_chosen": lengths.column("len_chosen"),
                "len_rejected": lengths.column("len_rejected"),
                "len_diff": pa.array(lc - lr, pa.int32()),
                "chosen_longer": pa.array(lc > lr),
            },
            schema=LENGTH_SCHEMA,
        )
        if skipped:
            activate(store, NAME, spec.key)
        else:
            commit_result(store, spec, table, report=length_stats(lc, lr))
    summary = ScoreSummary(NAME, spec.key, len(ids), skipped=skipped, seconds=t.seconds)
    add_stats(summary, stats)
    summary.report = length_report(store)
    return summary


def length_stats(len_chosen: np.ndarray, len_rejected: np.ndarray) -> dict[str, float]:
    diff = np.asarray(len_chosen, dtype=np.int64) - np.asarray(len_rejected, dtype=np.int64)
    n = len(diff)
    if n == 0:
        return {"pairs": 0}
    return {
        "pairs": n,
        "p_chosen_longer": float((diff > 0).mean()),
        "p_equal_length": float((diff == 0).mean()),
        "auc_length_diff": float((diff > 0).mean() + 0.5 * (diff == 0).mean()),
        "mean_len_chosen": float(np.mean(len_chosen)),
        "mean_len_rejected": float(np.mean(len_rejected)),
    }


def length_report(store: Store) -> dict[str, float]:
    """The dataset-level length report over scored_pairs (Spearman once reward_margin has run)."""
    from scipy.stats import spearmanr

    from curation.scoring.views import connect

    with contextlib.closing(connect(store)) as con:
        rows = con.sql(
            "SELECT len_chosen, len_rejected, reward_chosen, reward_rejected, margin, quality_class "
            "FROM scored_pairs WHERE len_chosen IS NOT NULL"
        ).to_arrow_table()
    lc = rows.column("len_chosen").to_numpy()
    lr = rows.column("len_rejected").to_numpy()
    report = length_stats(lc, lr)
    rc = rows.column("reward_chosen").to_numpy(zero_copy_only=False)
    rr = rows.column("reward_rejected").to_numpy(zero_copy_only=False)
    ok = ~(np.isnan(rc.astype(float)) | np.isnan(rr.astype(float)))
    if ok.sum() >= 3:
        rewards = np.concatenate([rc[ok], rr[ok]]).astype(float)
        lens = np.concatenate([lc[ok], lr[ok]]).astype(float)
        report["spearman_reward_length"] = float(spearmanr(rewards, lens).statistic)
        m = rows.column("margin").to_numpy(zero_copy_only=False).astype(float)[ok]
        report["spearman_margin_len_diff"] = float(spearmanr(m, (lc - lr)[ok]).statistic)
        report["pairs_with_rewards"] = int(ok.sum())
    with contextlib.closing(connect(store)) as con:
        report["length_explained"] = int(
            con.sql("SELECT count(*) FROM scored_pairs WHERE length_explained").fetchall()[0][0]
        )
    return report
