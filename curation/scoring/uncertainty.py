"""uncertainty: per-sample UAL uncertainty u in [0, 1] and label smoothing epsilon (methods.md section 1).

Sources of u:
- ``rubric-embedding`` (default, offline): an APPROXIMATION of the UAL judge, not a replacement.
  The conversation's MiniLM embedding is compared with short prototype descriptions of the
  rubric's three bands (creative/casual 70-99, semi-formal 40-69, technical/maths/code 0-39);
  a softmax over the band similarities (temperature ``tau``) weights the band centres, and
  u = expected score / 99. Cheap and monotone in "how technical it looks"; use the judge for real.
- ``judge``: an LLM behind an OpenAI-compatible endpoint rates each conversation 0-99 with the
  rubric (curation/scoring/judge.py); u = score / 99.
- ``entropy``: a local causal LM's mean predictive entropy over the response tokens,
  rank-normalised to [0, 1] over the scored set.
- ``column``: an existing value: a DuckDB expression over the sft view (e.g.
  ``CAST(meta->>'$.u' AS DOUBLE)``), divided by ``column_scale``; must land in [0, 1].

Smoothing: epsilon_i proportional to u_i, rescaled so that the mean is ``mean_epsilon`` (0.1),
capped at ``cap`` (0.99), rescaled again until the mean is within 0.001 (``ual_smoothing``).
Per-record values (embeddings, judge scores, entropies) are cached; the rescaling is redone per run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER, ModelSpec
from curation.core.sql import check_expression
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
from curation.scoring.contract import Scorer
from curation.scoring.schemas import UNCERTAINTY_SCHEMA
from curation.scoring.task import ChunkTask
from curation.scoring.texts import final_response_of_sft, load_records, plain_render, prompt_of_sft, render

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "uncertainty"
VERSION = "1"
SOURCES = ("rubric-embedding", "judge", "entropy", "column")

#: Prototype descriptions of the UAL rubric's bands and the band centres (on the 0-99 scale).
BANDS: dict[str, tuple[float, list[str]]] = {
    "creative-casual": (
        84.5,
        [
            "Write a short story, a poem or song lyrics about a feeling.",
            "Casual chit-chat: tell me about your favourite things and how your day went.",
            "Brainstorm creative, fun ideas, names, slogans or jokes.",
            "Give me your opinion and imaginative suggestions; there is no single right answer.",
        ],
    ),
    "semi-formal": (
        54.5,
        [
            "Explain a concept in simple terms and give some advice.",
            "Summarize this article and describe the main points.",
            "Write a professional email or a short description of a product.",
            "Describe the history, causes and effects of an event.",
        ],
    ),
    "technical": (
        19.5,
        [
            "Solve this math word problem step by step and compute the final numeric answer.",
            "Calculate the total: 3 apples at $2 each plus 5 oranges, how many dollars in all?",
            "Write a Python function that implements the algorithm; fix the bug in this code.",
            "What is the exact fact, date, formula or single correct answer to this question?",
        ],
    ),
}


def ual_smoothing(
    u: np.ndarray, mean_epsilon: float = 0.1, cap: float = 0.99, tol: float = 1e-3
) -> np.ndarray:
    """epsilon_i proportional to u_i with dataset mean ``mean_epsilon``, each capped at ``cap``."""
    u = np.asarray(u, dtype=np.float64)
    if len(u) == 0:
        return u
    if not 0 <= mean_epsilon <= cap:
        raise ValueError(f"mean_epsilon {mean_epsilon} must lie in [0, cap={cap}]")
    if u.mean() <= 0:
        return np.full(len(u), mean_epsilon)
    eps = u * (mean_epsilon / u.mean())
    for _ in range(1000):
        eps = np.minimum(eps, cap)
        if abs(eps.mean() - mean_epsilon) <= tol:
            break
        free = eps < cap  # only uncapped samples can grow
        if not free.any() or eps[free].sum() == 0:
            break
        eps[free] *= (mean_epsilon * len(eps) - cap * (~free).sum()) / eps[free].sum()
    return eps


def rank_normalise(x: np.ndarray) -> np.ndarray:
    """Average ranks mapped to [0, 1] (NaN stays NaN)."""
    from scipy.stats import rankdata

    out = np.full(len(x), np.nan)
    ok = ~np.isnan(x)
    if ok.sum() == 1:
        out[ok] = 0.5
    elif ok.any():
        out[ok] = (rankdata(x[ok]) - 1) / (ok.sum() - 1)
    return out


def rubric_embedding_u(
    conv_emb: np.ndarray, proto_emb: dict[str, np.ndarray], tau: float = 0.02
) -> np.ndarray:
    """u from the similarity of each conversation embedding to the band prototypes (see module doc)."""
    names = list(BANDS)
    sims = np.stack([conv_emb @ proto_emb[b].T for b in names], axis=1)  # (n, bands, prototypes)
    band_sim = sims.max(axis=2)
    z = (band_sim - band_sim.max(axis=1, keepdims=True)) / tau
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    centres = np.array([BANDS[b][0] for b in names])
    return (p @ centres) / 99.0


class EntropyTask(ChunkTask):
    """A causal LM as a chunk task: mean predictive entropy over the final response of each conversation."""

    def __init__(self, spec: ModelSpec, config) -> None:
        self.spec, self.config = spec, config

    def load(self):
        from curation.scoring.runner import CausalLMEntropy

        return CausalLMEntropy(self.spec, self.config)

    def __call__(self, conversations: list[list[dict]]) -> pa.Table:
        lm = self.model()
        tok = lm.tokenizer
        prompts = [render(tok, prompt_of_sft(m)) for m in conversations]
        fulls = [render(tok, prompt_of_sft(m) + final_response_of_sft(m)) for m in conversations]
        return pa.table({"entropy": lm.entropy(prompts, fulls)})


def run(
    store: Store,
    *,
    source: str = "rubric-embedding",
    models: Sequence[str] | None = None,
    where: str | None = None,
    mean_epsilon: float = 0.1,
    cap: float = 0.99,
    # rubric-embedding
    encoder: str = DEFAULT_ENCODER,
    tau: float = 0.02,
    # judge
    base_url: str = "http://127.0.0.1:8000/v1",
    judge_model: str | None = None,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    retries: int = 4,
    api_key_env: str = "OPENAI_API_KEY",
    # column
    column: str | None = None,
    column_scale: float = 1.0,
    # runner
    device: str = "auto",
    bf16: bool | None = None,
    max_length: int = 512,
    chunk_size: int = 256,
    progress: bool = True,
    trust_remote_code: bool = False,
    allow_network: bool = False,
) -> ScoreSummary:
    """Score u for every SFT record from ``source`` and write uncertainty + UAL label smoothing."""
    if source not in SOURCES:
        raise ValueError(f"unknown uncertainty source {source!r}: use {', '.join(SOURCES)}")
    if isinstance(models, str):
        models = [models]
    summary = ScoreSummary(NAME, "", 0)
    with Timer() as t, store.writer_lock("score uncertainty"):
        records = load_records(store, "sft", where)
        if not records:  # nothing to score is not an error (a store may hold other kinds only)
            summary.skipped, summary.report = True, {"note": "no sft records to score"}
            return summary
        ids = [r["id"] for r in records]
        summary.records = len(ids)
        convs = [plain_render(r["messages"]) for r in records]
        params: dict = {"source": source, "mean_epsilon": mean_epsilon, "cap": cap}
        if source == "rubric-embedding":
            from curation.scoring.embeddings import Embedder

            emb = Embedder(
                store,
                encoder,
                device=device,
                bf16=bf16,
                progress=progress,
                trust_remote_code=trust_remote_code,
                allow_network=allow_network,
            )  # the embeddings cache's own chunking (1024), shared with every other user of that cache
            vecs = emb.embed(convs, "sft conversations")
            protos = {b: emb.encode_uncached(texts) for b, (_, texts) in BANDS.items()}
            u = rubric_embedding_u(vecs, protos, tau)
            add_stats(summary, emb.stats)
            fingerprint = emb.fingerprint
            params |= {"tau": tau, "embeddings": emb.cache.key, "bands": {b: v[1] for b, v in BANDS.items()}}
        elif source == "judge":
            from curation.scoring.judge import RUBRIC_VERSION, JudgeConfig, rate

            name = judge_model or (models[0] if models else None)
            if not name:
                raise ValueError("source judge needs --param judge_model=NAME (or --model NAME)")
            cfg = JudgeConfig(
                base_url=base_url,
                model=name,
                concurrency=concurrency,
                timeout_s=timeout_s,
                retries=retries,
                api_key_env=api_key_env,
            )
            cache = CacheSpec("judge", RUBRIC_VERSION, name, {"temperature": 0})

            def compute(pos: np.ndarray) -> pa.Table:
                return pa.table({"score": rate([convs[i] for i in pos], [ids[i] for i in pos], cfg)})

            table, stats = cached_compute(
                store,
                cache,
                ids,
                compute,
                schema=pa.schema([("id", pa.string()), ("score", pa.int32())]),
                chunk_size=chunk_size,
                progress=progress,
                desc=f"judge {name}",
            )
            add_stats(summary, stats)
            u = table.column("score").to_numpy().astype(np.float64) / 99.0
            fingerprint = name
            params |= {"judge_model": name, "rubric": RUBRIC_VERSION}
        elif source == "entropy":
            import dataclasses

            from curation.core.models import bf16_supported, describe, pick_device
            from curation.scoring.runner import RunnerConfig

            if not models:
                raise ValueError("source entropy needs --model PATH (a causal LM)")
            spec = ModelSpec(models[0], trust_remote_code, allow_network)
            config = RunnerConfig(device=device, bf16=bf16, max_length=max_length)
            if config.bf16 is None:  # decided once, here: it keys the cache
                config = dataclasses.replace(config, bf16=bf16_supported(pick_device(device)))
            lm_fingerprint = describe(spec)["fingerprint"]
            cache = CacheSpec("entropy", "1", lm_fingerprint, {"max_length": max_length, "bf16": config.bf16})
            table, stats = cached_compute(
                store,
                cache,
                ids,
                schema=pa.schema([("id", pa.string()), ("entropy", pa.float64())]),
                order=[len(c) for c in convs],
                chunk_size=chunk_size,
                progress=progress,
                desc=f"entropy {models[0]}",
                task=EntropyTask(spec, config),
                items=[r["messages"] for r in records],
            )
            add_stats(summary, stats)
            u = rank_normalise(table.column("entropy").to_numpy(zero_copy_only=False).astype(np.float64))
            fingerprint = lm_fingerprint
            params |= {"model": models[0], "max_length": max_length}
        else:
            if not column:
                raise ValueError(
                    "source column needs --param column=EXPR (a DuckDB expression over the sft view)"
                )
            if not (math.isfinite(float(column_scale)) and float(column_scale) > 0):
                raise ValueError(f"column_scale {column_scale!r}: must be a finite number > 0")
            expr = check_expression(column, "--param column")
            q = f"SELECT id, CAST(({expr}) AS DOUBLE) / {float(column_scale)!r} AS u FROM sft"
            res = store.query(q, what=f"--param column={column!r}")
            vals = dict(zip(res.column("id").to_pylist(), res.column("u").to_pylist(), strict=True))
            u = np.array([np.nan if vals.get(i) is None else vals[i] for i in ids], dtype=np.float64)
            bad = [(i, v) for i, v in zip(ids, u, strict=True) if not (0.0 <= v <= 1.0)]
            if bad:
                i, v = bad[0]
                raise ValueError(
                    f"column {column!r} / {column_scale}: {len(bad)} sft record(s) outside [0, 1] or NULL, "
                    f"first id {i} = {v}; pass --param column_scale=99 for 0-99 scores"
                )
            fingerprint = "column"
            params |= {"column": column, "column_scale": column_scale}
        eps = ual_smoothing(
            np.nan_to_num(u, nan=float(np.nanmean(u)) if np.isfinite(u).any() else 0.0), mean_epsilon, cap
        )
        eps[np.isnan(u)] = np.nan
        table = pa.table(
            {"id": ids, "uncertainty": u, "label_smoothing": eps, "uncertainty_source": [source] * len(ids)},
            schema=UNCERTAINTY_SCHEMA,
        )
        spec = ResultSpec(NAME, VERSION, fingerprint, params, ids_fingerprint(ids))
        summary.key = spec.key
        report = {
            "records": len(ids),
            "mean_u": float(np.nanmean(u)),
            "mean_epsilon": float(np.nanmean(eps)),
            "max_epsilon": float(np.nanmax(eps)),
        }
        with contextlib.closing(store.connect()) as con:
            src = dict(con.sql("SELECT id, source FROM sft").fetchall())
        for s in sorted({src[i] for i in ids}):
            mask = np.array([src[i] == s for i in ids])
            report[f"mean_u[{s}]"] = float(np.nanmean(u[mask]))
        summary.report = report
        if result_done(store, spec) and summary.computed == 0:
            activate(store, NAME, spec.key)
            summary.skipped = True
        else:
            commit_result(store, spec, table, report=report)
    summary.seconds = t.seconds
    return summary


class Uncertainty(Scorer):
    """uncertainty in the registry (its rescaling to the dataset mean is a global step in ``run``)."""

    name = NAME
    version = VERSION
    kinds = ("sft",)
    result_schema = UNCERTAINTY_SCHEMA
    views = {"scored_sft": None}
    whole_set = True
    order = 40
    entry = staticmethod(run)
