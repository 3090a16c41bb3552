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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.models import DEFAULT_ENCODER, ModelSpec
from curation.core.options import option
from curation.core.sql import check_expression
from curation.scoring.base import ScoreSummary, add_stats
from curation.scoring.cache import CacheSpec, ResultSpec, cached_compute, ids_fingerprint
from curation.scoring.contract import Outcome, Scorer, ScoreRun
from curation.scoring.schemas import UNCERTAINTY_SCHEMA
from curation.scoring.task import ChunkTask
from curation.scoring.texts import final_response_of_sft, plain_render, prompt_of_sft, render

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


@dataclass
class UncertaintyConfig:
    source: str = option("rubric-embedding", "Where u comes from (module docstring).")
    models: Sequence[str] | None = option(None, "entropy: a causal LM; judge: a name.")
    mean_epsilon: float = option(0.1, "Mean label smoothing (UAL; methods.md 1).")
    cap: float = option(0.99, "Largest label smoothing of one sample (UAL).")
    encoder: str = option(DEFAULT_ENCODER, "rubric-embedding: sentence encoder.")
    tau: float = option(0.02, "rubric-embedding: softmax temperature.")
    base_url: str = option("http://127.0.0.1:8000/v1", "judge: the endpoint.")
    judge_model: str | None = option(None, "judge: the model's name (or --model).")
    concurrency: int = option(8, "judge: requests in flight.")
    timeout_s: float = option(60.0, "judge: seconds per request.")
    retries: int = option(4, "judge: attempts per record.")
    api_key_env: str = option("OPENAI_API_KEY", "judge: the key's variable.")
    column: str | None = option(None, "column: a DuckDB expression over sft.")
    column_scale: float = option(1.0, "column: u = column / column_scale.")
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    bf16: bool | None = option(None, "bfloat16 autocast (None: where supported).")
    max_length: int = option(512, "entropy: tokens per conversation.")
    trust_remote_code: bool = option(False, "Allow the model's own code.")
    allow_network: bool = option(False, "Let a hub id be downloaded.")

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown uncertainty source {self.source!r}: use {', '.join(SOURCES)}")
        if isinstance(self.models, str):
            self.models = [self.models]


#: what a source gives: u per record, and the fingerprint and params that key the result
Values = tuple[np.ndarray, str, dict]


class Uncertainty(Scorer):
    """Score u for every SFT record from ``source`` and write uncertainty + UAL label smoothing (the
    rescaling to the dataset mean is a global step after the per-record values)."""

    name = NAME
    version = VERSION
    kinds = ("sft",)
    Config = UncertaintyConfig
    result_schema = UNCERTAINTY_SCHEMA
    views = {"scored_sft": None}
    whole_set = True
    order = 40
    chunk_size = 256

    def score(self, run: ScoreRun) -> Outcome | None:
        records, c = run.by_kind["sft"], self.config
        if not records:  # nothing to score is not an error (a store may hold other kinds only)
            run.summary.skipped, run.summary.report = True, {"note": "no sft records to score"}
            return None
        ids = [r["id"] for r in records]
        source = getattr(self, f"_{c.source.replace('-', '_')}")
        u, fingerprint, params = source(
            run.store, records, run.summary, run.progress, run.chunk_size or self.chunk_size
        )
        eps = ual_smoothing(
            np.nan_to_num(u, nan=float(np.nanmean(u)) if np.isfinite(u).any() else 0.0), c.mean_epsilon, c.cap
        )
        eps[np.isnan(u)] = np.nan
        table = pa.table([ids, u, eps, [c.source] * len(ids)], schema=UNCERTAINTY_SCHEMA)
        params = {"source": c.source, "mean_epsilon": c.mean_epsilon, "cap": c.cap} | params
        report = {
            "records": len(ids),
            "mean_u": float(np.nanmean(u)),
            "mean_epsilon": float(np.nanmean(eps)),
            "max_epsilon": float(np.nanmax(eps)),
        }
        sources = np.array([r["source"] for r in records])
        for s in sorted(set(sources)):
            report[f"mean_u[{s}]"] = float(np.nanmean(u[sources == s]))
        return ResultSpec(NAME, VERSION, fingerprint, params, ids_fingerprint(ids)), table, report

    def _rubric_embedding(
        self, store: Store, records: list[dict], summary: ScoreSummary, progress: bool, chunk_size: int
    ) -> Values:
        from curation.scoring.embeddings import Embedder

        c = self.config
        opts = {"trust_remote_code": c.trust_remote_code, "allow_network": c.allow_network}
        # the embeddings cache's own chunking (1024), shared with every other user of that cache
        emb = Embedder(store, c.encoder, device=c.device, bf16=c.bf16, progress=progress, **opts)
        vecs = emb.embed([plain_render(r["messages"]) for r in records], "sft conversations")
        protos = {b: emb.encode_uncached(texts) for b, (_, texts) in BANDS.items()}
        add_stats(summary, emb.stats)
        params = {"tau": c.tau, "embeddings": emb.cache.key, "bands": {b: v[1] for b, v in BANDS.items()}}
        return rubric_embedding_u(vecs, protos, c.tau), emb.fingerprint, params

    def _judge(
        self, store: Store, records: list[dict], summary: ScoreSummary, progress: bool, chunk_size: int
    ) -> Values:
        from curation.scoring.judge import RUBRIC_VERSION, JudgeConfig, rate

        c = self.config
        name = c.judge_model or (c.models[0] if c.models else None)
        if not name:
            raise ValueError("source judge needs --param judge_model=NAME (or --model NAME)")
        endpoint = {
            k: getattr(c, k) for k in ("base_url", "concurrency", "timeout_s", "retries", "api_key_env")
        }
        cfg = JudgeConfig(model=name, **endpoint)
        ids, convs = [r["id"] for r in records], [plain_render(r["messages"]) for r in records]

        def compute(pos: np.ndarray) -> pa.Table:
            return pa.table({"score": rate([convs[i] for i in pos], [ids[i] for i in pos], cfg)})

        table, stats = cached_compute(
            store,
            CacheSpec("judge", RUBRIC_VERSION, name, {"temperature": 0}),
            ids,
            compute,
            schema=pa.schema([("id", pa.string()), ("score", pa.int32())]),
            chunk_size=chunk_size,
            progress=progress,
            desc=f"judge {name}",
        )
        add_stats(summary, stats)
        u = table.column("score").to_numpy().astype(np.float64) / 99.0
        return u, name, {"judge_model": name, "rubric": RUBRIC_VERSION}

    def _entropy(
        self, store: Store, records: list[dict], summary: ScoreSummary, progress: bool, chunk_size: int
    ) -> Values:
        from curation.core.models import bf16_supported, describe, pick_device
        from curation.scoring.runner import RunnerConfig

        c = self.config
        if not c.models:
            raise ValueError("source entropy needs --model PATH (a causal LM)")
        spec = ModelSpec(c.models[0], c.trust_remote_code, c.allow_network)
        bf16 = bf16_supported(pick_device(c.device)) if c.bf16 is None else c.bf16  # it keys the cache
        lm_fingerprint = describe(spec)["fingerprint"]
        table, stats = cached_compute(
            store,
            CacheSpec("entropy", "1", lm_fingerprint, {"max_length": c.max_length, "bf16": bf16}),
            [r["id"] for r in records],
            schema=pa.schema([("id", pa.string()), ("entropy", pa.float64())]),
            order=[len(plain_render(r["messages"])) for r in records],
            chunk_size=chunk_size,
            progress=progress,
            desc=f"entropy {c.models[0]}",
            task=EntropyTask(spec, RunnerConfig(device=c.device, bf16=bf16, max_length=c.max_length)),
            items=[r["messages"] for r in records],
        )
        add_stats(summary, stats)
        u = rank_normalise(table.column("entropy").to_numpy(zero_copy_only=False).astype(np.float64))
        return u, lm_fingerprint, {"model": c.models[0], "max_length": c.max_length}

    def _column(
        self, store: Store, records: list[dict], summary: ScoreSummary, progress: bool, chunk_size: int
    ) -> Values:
        c = self.config
        if not c.column:
            raise ValueError(
                "source column needs --param column=EXPR (a DuckDB expression over the sft view)"
            )
        if not (math.isfinite(float(c.column_scale)) and float(c.column_scale) > 0):
            raise ValueError(f"column_scale {c.column_scale!r}: must be a finite number > 0")
        expr = check_expression(c.column, "--param column")
        q = f"SELECT id, CAST(({expr}) AS DOUBLE) / {float(c.column_scale)!r} AS u FROM sft"
        res = store.query(q, what=f"--param column={c.column!r}")
        vals = dict(zip(res.column("id").to_pylist(), res.column("u").to_pylist(), strict=True))
        ids = [r["id"] for r in records]
        u = np.array([np.nan if vals.get(i) is None else vals[i] for i in ids], dtype=np.float64)
        bad = [(i, v) for i, v in zip(ids, u, strict=True) if not (0.0 <= v <= 1.0)]
        if bad:
            i, v = bad[0]
            raise ValueError(
                f"column {c.column!r} / {c.column_scale}: {len(bad)} sft record(s) outside [0, 1] or NULL, "
                f"first id {i} = {v}; pass --param column_scale=99 for 0-99 scores"
            )
        return u, "column", {"column": c.column, "column_scale": c.column_scale}


def run(store: Store, *, where: str | None = None, progress: bool = True, **config: Any) -> ScoreSummary:
    """Score u for every SFT record and write uncertainty + UAL label smoothing (``UncertaintyConfig``
    fields, and ``chunk_size``)."""
    return Uncertainty.run_with(store, where=where, progress=progress, **config)
