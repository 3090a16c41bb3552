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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER, ModelSpec
from curation.core.names import sql_string
from curation.core.options import option
from curation.scoring.base import ScoreSummary
from curation.scoring.cache import CacheSpec, cached_compute
from curation.scoring.contract import Scorer
from curation.scoring.schemas import LENGTH_SCHEMA
from curation.scoring.texts import plain_render, response_text

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "length_bias"
VERSION = "1"
DEFAULTS = {"ratio": 1.5, "min_diff": 16}
#: the per-record cache: token lengths of prompt, chosen and rejected (shared with reward_margin)
CACHE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("len_prompt", pa.int32()),
        ("len_chosen", pa.int32()),
        ("len_rejected", pa.int32()),
    ]
)


@dataclass
class LengthBiasConfig:
    tokenizer: str = option(
        DEFAULT_ENCODER, "Tokenizer that counts the tokens (default the bundled MiniLM's, as the views show)."
    )
    ratio: float = option(
        DEFAULTS["ratio"], "length_explained: len_chosen >= ratio x len_rejected (methods.md section 5)."
    )
    min_diff: int = option(
        DEFAULTS["min_diff"],
        "length_explained: and len_chosen - len_rejected >= min_diff tokens (methods.md 5).",
    )
    trust_remote_code: bool = option(False, "Allow the tokenizer's own code.")
    allow_network: bool = option(False, "Let a hub id be downloaded.")


class LengthBias(Scorer):
    """Token lengths per pair (a per-record cache), then len_diff, chosen_longer and the length report."""

    name = NAME
    version = VERSION
    kinds = ("pair",)
    Config = LengthBiasConfig
    result_schema = LENGTH_SCHEMA
    views = {"scored_pairs": None}
    order = 20
    all_order = 5  # `curate score all` measures lengths first
    cache_name = "token_lengths"
    chunk_size = 4096

    def __getstate__(self) -> dict:
        return {"config": self.config}  # the tokenizer is loaded where the chunks are computed

    def spec(self) -> ModelSpec:
        return ModelSpec(self.config.tokenizer, self.config.trust_remote_code, self.config.allow_network)

    def fingerprint(self) -> str:
        from curation.core.models import fingerprint, resolve

        return fingerprint(resolve(self.config.tokenizer, self.config.allow_network))

    def cache_params(self) -> dict:
        return {"render": "plain"}

    def result_params(self) -> dict:
        return {
            "tokenizer": self.config.tokenizer,
            "ratio": self.config.ratio,
            "min_diff": self.config.min_diff,
        }

    def cache_schema(self) -> pa.Schema:
        return CACHE_SCHEMA

    def items(self, records: list[dict]) -> list[tuple[str, str, str]]:
        return [
            (plain_render(r["prompt"]), response_text(r["chosen"]), response_text(r["rejected"]))
            for r in records
        ]

    def load(self):
        from curation.scoring.runner import TokenCounter

        return TokenCounter(self.spec())

    def compute(self, batch: list[tuple[str, str, str]]) -> pa.Table:
        count = self.model().count
        return pa.table(
            {
                "len_prompt": count([b[0] for b in batch]),
                "len_chosen": count([b[1] for b in batch]),
                "len_rejected": count([b[2] for b in batch]),
            }
        )

    def finalize(self, table: pa.Table) -> tuple[pa.Table, dict]:
        lc = np.asarray(table.column("len_chosen").to_numpy(), dtype=np.int64)
        lr = np.asarray(table.column("len_rejected").to_numpy(), dtype=np.int64)
        result = pa.table(
            {
                "id": table.column("id"),
                "len_prompt": table.column("len_prompt"),
                "len_chosen": table.column("len_chosen"),
                "len_rejected": table.column("len_rejected"),
                "len_diff": pa.array(lc - lr, pa.int32()),
                "chosen_longer": pa.array(lc > lr),
            },
            schema=LENGTH_SCHEMA,
        )
        return result, length_stats(lc, lr)

    def run(
        self, store: Store, *, where: str | None = None, progress: bool = True, chunk_size: int | None = None
    ) -> ScoreSummary:
        summary = super().run(store, where=where, progress=progress, chunk_size=chunk_size)
        summary.report = length_report(store)
        return summary

    @classmethod
    def derived_columns(cls, store: Store | None) -> dict[str, list[tuple[str, str, str]]]:
        from curation.scoring.cache import active_meta

        params = (active_meta(store, NAME) or {}).get("params", {}) if store is not None else {}
        # typed literals, never bare text: a ratio of NaN written by an older run must not break the view
        ratio = sql_string(str(_stored(params, "ratio", float)))
        min_diff = _stored(params, "min_diff", int)
        sql = (
            f"CASE WHEN length_bias.id IS NULL THEN NULL ELSE (length_bias.len_chosen >= {ratio}::DOUBLE * "
            f"length_bias.len_rejected AND length_bias.len_diff >= {min_diff} AND "
            "coalesce(reward_margin.quality_class <> 'clean', true)) END"
        )
        return {"scored_pairs": [("length_explained", sql, "BOOLEAN")]}


def _stored(params: dict[str, Any], key: str, kind: type) -> Any:
    """A parameter as a run stored it; the default where an older run stored something unreadable (a NaN
    is stored as null; the command line once passed 'nan' and 'abc' as text)."""
    try:
        return kind(params.get(key, DEFAULTS[key]))
    except (TypeError, ValueError):
        return DEFAULTS[key]


def pair_lengths(
    store: Store, records: list[dict], tokenizer: str = DEFAULT_ENCODER, progress: bool = True, **spec_kw: Any
):
    """(table aligned with records, CacheStats, fingerprint): token lengths of prompt, chosen and rejected."""
    scorer = LengthBias(LengthBiasConfig(tokenizer=tokenizer, **spec_kw))
    fp = scorer.fingerprint()
    spec = CacheSpec(scorer.cache_name, VERSION, fp, scorer.cache_params())
    ids = [r["id"] for r in records]
    table, stats = cached_compute(
        store,
        spec,
        ids,
        schema=CACHE_SCHEMA,
        chunk_size=scorer.chunk_size,
        progress=progress,
        desc="token lengths",
        task=scorer,
        items=scorer.items(records),
    )
    return table, stats, fp


def run(store: Store, *, where: str | None = None, progress: bool = True, **config: Any) -> ScoreSummary:
    """Score token lengths of every pair and write the length_bias result (``LengthBiasConfig`` fields,
    and ``chunk_size``)."""
    return LengthBias.run_with(store, where=where, progress=progress, **config)


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
