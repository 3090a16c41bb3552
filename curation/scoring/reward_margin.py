"""reward_margin: preference strength per pair (methods.md section 3, Secrets of RLHF II), length-controlled.

For M reward models m: d_im = r_m(x, y_chosen) - r_m(x, y_rejected); the raw strength is
``margin_raw`` = mean_m d_im. ``margin`` (mu) is the same strength with the pair's length and format
difference controlled for (below; ``length_control=False`` makes it equal ``margin_raw``), and
``margin_std`` (sigma) is the sample std over the M controlled margins (0 for one model).
``reward_chosen`` and ``reward_rejected`` are the raw rewards (means over models): their difference is
``margin_raw``.

Classes (on the controlled margin): ``incorrect`` = the label goes against what the models read in the
content of the two responses, more so than for 80 % of the pairs of a similar length difference;
``ambiguous`` = the next 20 %; else ``clean``. Thresholds are quantiles by default (bottom 20 %
incorrect, next 20 % ambiguous), taken within length strata: the sign of the token-length difference
(chosen longer, shorter, equal) crossed with up to ``length_strata`` quantile bins of its size (default
5, fewer on small sets so that a bin holds 25 pairs or more). Each stratum gives up its share of pairs
(``lowest_per_stratum``), so the flagged set holds long and short chosen responses in the proportions of
the data set. ``length_strata=0`` takes the quantiles over all pairs. Value thresholds
(``incorrect_below``, ``ambiguous_below``) compare the controlled margin itself, in every stratum alike.
``adaptive_margin`` = margin_scale * clip(mu, 0, max_margin): the margin a trainer puts inside the
sigmoid (L = -log sigma(dr - m)); 0 for pairs the models do not support.

What "controlled" means (``length_control``, default true): the part of the preference that the
length and format features of curation/core/length_features.py explain (log length ratio, signed log length
difference, its sign, the ratio scaled by the pair's mean log length, and differences in list items,
headings, code blocks, table rows and bold spans; token lengths from length_bias's cached
``pair_lengths``) is taken out of mu. Why: a head cross-fitted on a data set learns whichever length
direction the data leans to and then flags the pairs that go against it (on HH harmless + the
LLaMA-Factory demo, chosen was longer in 63 % of "incorrect" pairs against 44 % overall), which says
nothing about their labels. How, per backend:
- ``crossfit`` (frozen embeddings): a product of experts. A linear bias expert on the length features
  is trained jointly with the content head (Bradley-Terry on the sum; logistic head: the bias expert
  penalised 200x less, ``c_bias`` 1.0 against ``c`` 0.005; MLP head: it starts at the length-only fit
  and learns 3x faster, without weight decay), and only the content head gives mu. The content head
  sees the embeddings and ``content_features`` (refusal phrase, question back, question-word recall):
  no word or sentence counts, no list or markdown cues. ``margin_raw`` is the uncontrolled head of
  version 1 (embeddings + ``dialogue_features``), fitted on the same folds.
- ``models`` and ``crossfit`` with ``finetune`` (pretrained models cannot be retrained with a bias
  expert, and a fine-tune per fold is too dear to run twice for ``margin_raw``): each model's margins are residualised on the length features by a ridge regression without intercept,
  cross-fitted by prompt hash (``folds``): a pair whose responses look alike keeps its margin, and what
  is left is linearly uncorrelated with the features out of fold.
The strata then remove what a linear expert leaves of the length make-up of the flagged set. Turning
the control off (``--param length_control=false``) gives version 1's margins and classes exactly.

Backends
- ``models``: any number of pretrained reward models (AutoModelForSequenceClassification with one
  output, e.g. the folder training/rm saves). Rewards are cached per (pair, model fingerprint),
  so adding a model or new pairs scores only what is new. Input: the dialogue rendered with the
  tokenizer's chat template (else "role: content" lines), truncated from the left.
- ``crossfit``: reward models trained on the data itself, out of fold (curation/scoring/crossfit.py):
  pairs are split into K folds by a hash of their prompt (so no model sees the pair or its prompt), one
  model per fold scores the held-out fold, and ``repeats`` different fold assignments give
  M = repeats margins per pair. Default head on CPU: a Bradley-Terry reward head on frozen MiniLM
  embeddings of (last user turn + response) plus cheap dialogue features (``head`` = logistic
  (default; C = 0.005 was best in benchmarks/noise) | mlp). ``finetune=True`` instead fine-tunes the
  whole encoder per fold (for GPUs; by default 2 epochs at ``finetune_lr`` 5e-5, 3 repeats, and soft
  labels ``finetune_soft_label`` 0.1, which make the loss robust to flipped labels: on HH harmless
  with 20 % flips, MiniLM on an H200 ranks the flips at AUROC 0.64-0.67 per repeat and 0.673-0.683
  for 3-5 repeats, against 0.595 for the length difference; benchmarks/gpu/RESULTS.md).
- ``judge``: an LLM judge behind an OpenAI-compatible endpoint (``--model NAME --param base_url=URL``)
  asks about each pair in both orders; the two orders are the models axis, so mu is the mean of the
  judge's per-order log-odds (or votes) that chosen is better, and ``judge_swap_inconsistent`` marks
  pairs whose orders disagree (NULL for the other backends). Formula, cache and options:
  curation/scoring/pairwise_judge.py.
What the control costs and buys on real data: benchmarks/noise/RESULTS.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.length_features import markdown_matrix, pair_length_features
from curation.core.models import DEFAULT_ENCODER, ModelSpec
from curation.core.options import option
from curation.scoring.base import ScoreSummary, add_stats
from curation.scoring.cache import CacheSpec, ResultSpec, cached_compute, ids_fingerprint, result_done
from curation.scoring.contract import Outcome, Scorer, ScoreRun
from curation.scoring.crossfit import (
    crossfit_features,
    crossfit_rewards,
    finetune_rewards,
    residualise,
    response_embeddings,
)
from curation.scoring.schemas import REWARD_MARGIN_SCHEMA
from curation.scoring.task import ChunkTask
from curation.scoring.texts import plain_render, render, response_text
from schemas.ids import text_id

if TYPE_CHECKING:
    from curation.core.store import Store

NAME = "reward_margin"
VERSION = "2"  # 2: length control (margin_raw; margin and classes controlled by default)
REWARDS_VERSION = "1"


# ------------------------------------------------------------------ combine
#: A size bin of the length strata holds at least this many pairs on average (fewer bins on small sets).
MIN_STRATUM = 25


def length_stratum(len_diff: np.ndarray, bins: int = 5, min_size: int = MIN_STRATUM) -> np.ndarray:
    """Stratum per pair: the sign of the length difference (shorter, equal, longer chosen) x up to
    ``bins`` quantile bins of its size within that sign, as many as keep ``min_size`` pairs per bin."""
    d = np.asarray(len_diff, dtype=np.float64)
    out = np.zeros(len(d), dtype=np.int64)  # 0: equal lengths
    for k, side in enumerate((d < 0, d > 0)):
        a = np.abs(d[side])
        n_bins = max(1, min(bins, len(a) // max(1, min_size)))
        edges = np.quantile(a, np.linspace(0, 1, n_bins + 1)[1:-1]) if len(a) else np.zeros(0)
        out[side] = 1 + k * max(1, bins) + np.searchsorted(edges, a, side="right")
    return out


def lowest_per_stratum(mu: np.ndarray, strata: np.ndarray, share: float) -> np.ndarray:
    """Mask of the round(share x pairs) lowest margins, taken lowest-first within each stratum, the count
    of each stratum in proportion to its size (largest remainders), so the strata give up equal shares."""
    k = int(round(share * len(mu)))
    labels, sizes = np.unique(strata, return_counts=True)
    quota = k * sizes / max(1, len(mu))
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: k - int(take.sum())]] += 1
    mask = np.zeros(len(mu), dtype=bool)
    for label, n in zip(labels, take, strict=True):
        idx = np.nonzero(strata == label)[0]
        mask[idx[np.argsort(mu[idx], kind="stable")[:n]]] = True
    return mask


def classify(
    mu: np.ndarray,
    incorrect_quantile: float = 0.2,
    ambiguous_quantile: float = 0.4,
    incorrect_below: float | None = None,
    ambiguous_below: float | None = None,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, float, float]:
    """Quality class per pair and the two thresholds used (values override quantiles).

    With ``strata``, a quantile class takes its share of pairs within each stratum
    (``lowest_per_stratum``) and has no single threshold (NaN is returned for it); value thresholds
    compare mu itself, in every stratum alike.
    """
    if strata is None:
        t_inc = incorrect_below if incorrect_below is not None else float(np.quantile(mu, incorrect_quantile))
        t_amb = ambiguous_below if ambiguous_below is not None else float(np.quantile(mu, ambiguous_quantile))
        if t_amb < t_inc:
            raise ValueError(f"ambiguous threshold {t_amb} is below the incorrect threshold {t_inc}")
        cls = np.where(mu < t_inc, "incorrect", np.where(mu < t_amb, "ambiguous", "clean"))
        return cls, t_inc, t_amb
    by_value = incorrect_below is not None, ambiguous_below is not None
    if by_value == (False, False) and ambiguous_quantile < incorrect_quantile:
        raise ValueError(f"ambiguous quantile {ambiguous_quantile} is below incorrect {incorrect_quantile}")
    if by_value == (True, True) and ambiguous_below < incorrect_below:
        raise ValueError(
            f"ambiguous threshold {ambiguous_below} is below the incorrect threshold {incorrect_below}"
        )
    inc = mu < incorrect_below if by_value[0] else lowest_per_stratum(mu, strata, incorrect_quantile)
    amb = mu < ambiguous_below if by_value[1] else lowest_per_stratum(mu, strata, ambiguous_quantile)
    cls = np.where(inc, "incorrect", np.where(amb, "ambiguous", "clean"))
    nan = float("nan")
    return cls, incorrect_below if by_value[0] else nan, ambiguous_below if by_value[1] else nan


def combine(
    ids: Sequence[str],
    rc: np.ndarray,
    rr: np.ndarray,
    *,
    controlled: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    incorrect_quantile: float = 0.2,
    ambiguous_quantile: float = 0.4,
    incorrect_below: float | None = None,
    ambiguous_below: float | None = None,
    margin_scale: float = 1.0,
    max_margin: float | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The reward_margin result from per-model rewards ``rc``, ``rr`` of shape (pairs, models).

    ``controlled`` (pairs, models): the length-controlled margins (None: the raw ones); ``strata``:
    classes by quantile within these strata (``length_stratum``; None: over all pairs).
    """
    rc, rr = np.atleast_2d(rc.T).T, np.atleast_2d(rr.T).T
    raw = (rc - rr).mean(axis=1)
    d = rc - rr if controlled is None else np.atleast_2d(np.asarray(controlled, dtype=np.float64).T).T
    m = d.shape[1]
    mu = d.mean(axis=1)
    sigma = d.std(axis=1, ddof=1) if m > 1 else np.zeros(len(mu))
    cls, t_inc, t_amb = classify(
        mu, incorrect_quantile, ambiguous_quantile, incorrect_below, ambiguous_below, strata
    )
    adaptive = margin_scale * np.clip(mu, 0.0, max_margin if max_margin is not None else np.inf)
    table = pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "reward_chosen": rc.mean(axis=1),
            "reward_rejected": rr.mean(axis=1),
            "margin": mu,
            "margin_raw": raw,
            "margin_std": sigma,
            "n_models": pa.array(np.full(len(mu), m), pa.int32()),
            "quality_class": pa.array(cls.tolist(), pa.string()),
            "adaptive_margin": adaptive,
            "judge_swap_inconsistent": pa.nulls(len(mu), pa.bool_()),  # the judge backend fills it
        },
        schema=REWARD_MARGIN_SCHEMA,
    )
    report = {
        "pairs": len(mu),
        "models": m,
        "share_margin_negative": float((mu < 0).mean()) if len(mu) else 0.0,
        "threshold_incorrect": t_inc,
        "threshold_ambiguous": t_amb,
        "incorrect": int((cls == "incorrect").sum()),
        "ambiguous": int((cls == "ambiguous").sum()),
        "clean": int((cls == "clean").sum()),
        "mean_margin_std": float(sigma.mean()) if len(mu) else 0.0,
    }
    if strata is not None:
        report["length_strata"] = int(len(np.unique(strata)))
    if m > 1:
        report["model_agreement_sign"] = float((np.sign(d) == np.sign(mu)[:, None]).mean())
    return table, report


def length_inputs(store: Store, records: list[dict], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(``pair_length_features`` (pairs, 9), token-length difference chosen - rejected) of each pair.

    Token lengths are length_bias's cached ``pair_lengths`` (the default tokenizer, as its view shows).
    """
    from curation.scoring.length_bias import pair_lengths

    lengths, _, _ = pair_lengths(store, records, DEFAULT_ENCODER, progress)
    lc = lengths.column("len_chosen").to_numpy().astype(np.float64)
    lr = lengths.column("len_rejected").to_numpy().astype(np.float64)
    mc = markdown_matrix([response_text(r["chosen"]) for r in records])
    mr = markdown_matrix([response_text(r["rejected"]) for r in records])
    return pair_length_features(lc, lr, mc, mr), lc - lr


def length_make_up(
    cls: np.ndarray, features: np.ndarray, len_diff: np.ndarray, raw: np.ndarray, mu: np.ndarray
) -> dict[str, float]:
    """What the flagged set is made of, and how much length the margins still carry (for the report)."""
    flagged = cls == "incorrect"

    def max_abs_corr(x: np.ndarray) -> float:
        cols = [c for c in features.T if c.std() > 0]
        return float(max((abs(np.corrcoef(x, c)[0, 1]) for c in cols), default=0.0)) if x.std() > 0 else 0.0

    return {
        "chosen_longer_share": float((len_diff > 0).mean()),
        "chosen_longer_share_incorrect": float((len_diff[flagged] > 0).mean()) if flagged.any() else 0.0,
        "max_abs_corr_margin_raw_length_features": max_abs_corr(raw),
        "max_abs_corr_margin_length_features": max_abs_corr(mu),
    }


# ---------------------------------------------------------- backend: models
class RewardTask(ChunkTask):
    """A reward model as a chunk task: rewards of (chosen, rejected) for a chunk of pair records."""

    def __init__(self, spec: ModelSpec, config) -> None:
        self.spec, self.config = spec, config

    def load(self):
        from curation.scoring.runner import RewardModel

        return RewardModel(self.spec, self.config)

    def __call__(self, recs: list[dict]) -> pa.Table:
        rm = self.model()
        tok = rm.tokenizer
        texts = [render(tok, list(r["prompt"]) + list(r["chosen"])) for r in recs]
        texts += [render(tok, list(r["prompt"]) + list(r["rejected"])) for r in recs]
        scores = rm.score(texts)
        return pa.table({"reward_chosen": scores[: len(recs)], "reward_rejected": scores[len(recs) :]})


def model_rewards(
    store: Store, records: list[dict], spec: ModelSpec, config, progress: bool = True, chunk_size: int = 256
):
    """(table id, reward_chosen, reward_rejected aligned with records, CacheStats, fingerprint).

    The model loads where the chunks are computed: here, or on each Ray worker (``parallel.workers``)."""
    import dataclasses

    from curation.core.models import bf16_supported, describe, pick_device

    if config.bf16 is None:  # decided once, here: it keys the cache
        config = dataclasses.replace(config, bf16=bf16_supported(pick_device(config.device)))
    fingerprint = describe(spec)["fingerprint"]
    params = {"max_length": config.max_length, "render": "chat-template-or-plain", "bf16": config.bf16}
    cache = CacheSpec("rewards", REWARDS_VERSION, fingerprint, params)
    schema = pa.schema(
        [("id", pa.string()), ("reward_chosen", pa.float64()), ("reward_rejected", pa.float64())]
    )
    order = [len(plain_render(r["prompt"])) + len(response_text(r["chosen"])) for r in records]
    items = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records]
    table, stats = cached_compute(
        store,
        cache,
        [r["id"] for r in records],
        schema=schema,
        order=order,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"rewards {spec.model}",
        task=RewardTask(spec, config),
        items=items,
    )
    return table, stats, fingerprint


# ------------------------------------------------------------------- config
def _pick(config: Any, *names: str) -> dict[str, Any]:
    return {n: getattr(config, n) for n in names}


@dataclass
class RewardMarginConfig:
    models: list[str] | None = option(
        None, "backend models: reward model folders or hub ids; judge: its name."
    )
    backend: str | None = option(None, "models | crossfit | judge (None: models if given, else crossfit).")
    # classes and margin
    incorrect_quantile: float = option(0.2, "Share of pairs classed incorrect (methods.md 3: bottom 20 %).")
    ambiguous_quantile: float = option(0.4, "Share classed incorrect or ambiguous (methods.md 3: next 20 %).")
    incorrect_below: float | None = option(
        None, "incorrect: margin below this value (overrides the quantile)."
    )
    ambiguous_below: float | None = option(
        None, "ambiguous: margin below this value (overrides the quantile)."
    )
    margin_scale: float = option(1.0, "adaptive_margin = margin_scale x clip(margin, 0, max_margin).")
    max_margin: float | None = option(None, "adaptive_margin's cap (None: none).")
    # length control (module docstring)
    length_control: bool = option(True, "Control margin and classes for length and format differences.")
    length_strata: int = option(5, "Quantile bins of |length difference| per sign for the classes (0: none).")
    c_bias: float = option(1.0, "crossfit: the bias expert's inverse penalty (200x the content head's c).")
    # judge (curation/scoring/pairwise_judge.py; the key never reaches caches or manifests)
    base_url: str | None = option(None, "judge: the OpenAI-compatible endpoint (else $CURATE_JUDGE_URL).")
    api_key: str | None = option(
        None, "judge: the API key (else from api_key_env); never stored.", repr=False
    )
    api_key_env: str | None = option(
        None, "judge: the key's variable (CURATE_JUDGE_API_KEY, OPENAI_API_KEY)."
    )
    concurrency: int = option(8, "judge: requests in flight.")
    timeout_s: float = option(60.0, "judge: seconds per request.")
    retries: int = option(4, "judge: retries of a request that failed (429, 5xx, network).")
    judge_logprobs: bool = option(True, "judge: ask for logprobs (margins as log-odds).")
    top_logprobs: int = option(5, "judge: alternatives per answer token (1..20).")
    judge_margin: str = option("auto", "judge: auto | logprobs | votes.")
    # crossfit
    encoder: str = option(DEFAULT_ENCODER, "crossfit: the encoder (frozen for a head, or fine-tuned).")
    folds: int = option(5, "Folds by prompt hash (crossfit; the residualised length control).")
    repeats: int | None = option(None, "crossfit: fold assignments = margins per pair (None: 3).")
    head: str = option("logistic", "crossfit: logistic | mlp.")
    c: float = option(0.005, "crossfit logistic head: inverse penalty (0.005 was best in benchmarks/noise).")
    hidden: int = option(64, "crossfit mlp head: hidden units.")
    finetune: bool = option(False, "crossfit: fine-tune the whole encoder per fold (GPU).")
    epochs: int | None = option(
        None, "crossfit: epochs (None: 30 for a head; 2 fine-tuning, benchmarks/gpu)."
    )
    finetune_lr: float = option(
        5e-5, "crossfit finetune: learning rate (best of four on HH: benchmarks/gpu)."
    )
    finetune_soft_label: float = option(0.1, "crossfit finetune: soft labels, robust to flipped labels.")
    seed: int = option(0, "crossfit: seed of the heads and the fine-tuning.")
    # runner
    device: str = option("auto", "auto | cpu | cuda | cuda:N.")
    bf16: bool | None = option(None, "Models in bf16 (None: where the device gains from it).")
    token_budget: int = option(8192, "Padded tokens per forward batch.")
    max_length: int = option(512, "Tokens per text (a longer text loses its start).")
    trust_remote_code: bool = option(False, "Allow the models' own code.")
    allow_network: bool = option(False, "Let hub ids be downloaded.")


COMBINE_KEYS = ("incorrect_quantile", "ambiguous_quantile", "incorrect_below", "ambiguous_below")
COMBINE_KEYS += ("margin_scale", "max_margin")


class RewardMargin(Scorer):
    """reward_margin: the backends' per-record model work (rewards, embeddings, judge calls) goes through
    ``cached_compute``; cross-fitting, the length control and the classes are whole-set steps of ``score``."""

    name = NAME
    version = VERSION
    kinds = ("pair",)
    Config = RewardMarginConfig
    result_schema = REWARD_MARGIN_SCHEMA
    views = {"scored_pairs": None}
    whole_set = True
    order = 10
    chunk_size = 256

    def spec(self, model: str) -> ModelSpec:
        return ModelSpec(model, self.config.trust_remote_code, self.config.allow_network)

    def runner(self):
        from curation.scoring.runner import RunnerConfig

        return RunnerConfig(**_pick(self.config, "device", "bf16", "token_budget", "max_length"))

    def score(self, run: ScoreRun) -> Outcome | None:
        """The backend's rewards, the length control, then ``combine``'s classes (module docstring). The
        crossfit backend computes nothing when its result exists already."""
        c, records = self.config, run.by_kind["pair"]
        if not records:  # nothing to score is not an error (a store may hold other kinds only)
            run.summary.skipped, run.summary.report = True, {"note": "no pairs to score"}
            return None
        models = [c.models] if isinstance(c.models, str) else c.models
        backend = c.backend or ("models" if models else "crossfit")
        ids, length_control = [r["id"] for r in records], c.length_control
        chunk_size = run.chunk_size or self.chunk_size
        keys = [text_id(plain_render(r["prompt"])) for r in records]  # folds by prompt
        combine_kw = _pick(c, *COMBINE_KEYS)
        control: dict[str, Any] = {"length_control": bool(length_control)}  # joins every backend's result key
        if length_control:
            control |= {"length_strata": c.length_strata, "length_tokenizer": DEFAULT_ENCODER}
        controlled = features = None  # a backend that controls for length itself sets them
        if backend == "models":
            if not models:
                raise ValueError("backend 'models' needs at least one --model")
            runs = [
                model_rewards(run.store, records, self.spec(m), self.runner(), run.progress, chunk_size)
                for m in models
            ]
            for _, stats, _ in runs:
                add_stats(run.summary, stats)
            rc, rr = (
                np.stack([t.column(f"reward_{s}").to_numpy() for t, _, _ in runs], 1)
                for s in ("chosen", "rejected")
            )
            fingerprint = ",".join(fp for _, _, fp in runs)
            params = {"backend": "models", "models": list(models), "max_length": c.max_length} | combine_kw
            params |= {"folds": c.folds} if length_control else {}
        elif backend == "crossfit":
            # 3 repeats: +0.02-0.03 AUROC over one on HH; 2 epochs at lr 5e-5: the best of four settings on HH
            # (benchmarks/gpu)
            reps, ep = c.repeats or 3, c.epochs or (2 if c.finetune else 30)
            if c.finetune:
                from curation.core.models import describe

                fingerprint = describe(self.spec(c.encoder))["fingerprint"]
                params = {"backend": "crossfit", "finetune": True, "folds": c.folds, "repeats": reps}
                params |= {"epochs": ep, "lr": c.finetune_lr, "seed": c.seed, "max_length": c.max_length}
                params |= {"soft_label": c.finetune_soft_label} | combine_kw
            else:
                from curation.scoring.embeddings import Embedder

                access = _pick(c, "device", "bf16", "trust_remote_code", "allow_network")
                embedder = Embedder(run.store, c.encoder, progress=run.progress, **access)
                fingerprint = embedder.fingerprint
                params = {"backend": "crossfit", "head": c.head, "folds": c.folds, "repeats": reps}
                params |= {"epochs": ep}
                params |= {"c": c.c} if c.head == "logistic" else {"hidden": c.hidden}
                params |= {"seed": c.seed, "embeddings": embedder.cache.key} | combine_kw
                params |= {"c_bias": c.c_bias} if length_control else {}
            rspec = ResultSpec(NAME, VERSION, fingerprint, params | control, ids_fingerprint(ids))
            if result_done(run.store, rspec):  # cross-fitting is dear: an existing result is only activated
                run.summary.cached = len(ids)
                return rspec, None, {}
            if c.finetune:
                ft_kw = {"folds": c.folds, "repeats": reps, "epochs": ep, "lr": c.finetune_lr, "seed": c.seed}
                ft_kw |= {"soft_label": c.finetune_soft_label, "progress": run.progress}
                rc, rr = finetune_rewards(records, keys, self.spec(c.encoder), self.runner(), **ft_kw)
                run.summary.computed = len(ids)
            else:
                ec, er = response_embeddings(records, embedder)
                add_stats(run.summary, embedder.stats)
                head_kw = {"folds": c.folds, "repeats": reps, "head": c.head, "c": c.c, "hidden": c.hidden}
                head_kw |= {"epochs": ep, "seed": c.seed}
                rc, rr = crossfit_rewards(*crossfit_features(records, ec, er), keys, **head_kw)
                if length_control:  # product of experts: the content head alone gives mu
                    features, len_diff = length_inputs(run.store, records, run.progress)
                    gc, gr = crossfit_features(records, ec, er, content_only=True)
                    cc, cr = crossfit_rewards(gc, gr, keys, bias=features, c_bias=c.c_bias, **head_kw)
                    controlled = cc - cr
        elif backend == "judge":
            from curation.scoring.pairwise_judge import judge_margins

            judge_kw = _pick(c, "base_url", "api_key", "api_key_env", "concurrency", "timeout_s", "retries")
            judge_kw |= {
                "logprobs": c.judge_logprobs,
                "top_logprobs": c.top_logprobs,
                "progress": run.progress,
            }
            judge_kw |= {"margin_from": c.judge_margin, "chunk_size": chunk_size}
            jm = judge_margins(run.store, records, models, **judge_kw)
            add_stats(run.summary, jm.stats)
            (rc, rr), fingerprint, combine_kw = jm.rewards(), jm.fingerprint, jm.thresholds(combine_kw)
            params = jm.params | combine_kw
            if jm.margin_from == "votes" and length_control:
                # votes take five values: residualised they would lose their meaning (mu < 0: the judge
                # disagrees), so the margin and classes stay the judge's own; the report still shows the
                # flagged set's chosen-longer share
                length_control, control = False, {"length_control": False, "votes_uncontrolled": True}
        else:
            raise ValueError(f"unknown backend {backend!r}: use models, crossfit or judge")
        strata = None
        if length_control:  # backends without a bias expert: residualise their margins out of fold
            if features is None:
                features, len_diff = length_inputs(run.store, records, run.progress)
            if controlled is None:
                controlled = residualise(rc - rr, features, keys, c.folds)
            strata = length_stratum(len_diff, c.length_strata) if c.length_strata > 0 else None
        table, report = combine(ids, rc, rr, controlled=controlled, strata=strata, **combine_kw)
        if backend == "judge":
            table, report = jm.annotate(table, report)
        if length_control or control.get("votes_uncontrolled"):  # what the flagged set is made of
            if features is None:
                features, len_diff = length_inputs(run.store, records, run.progress)
            cls = np.asarray(table.column("quality_class").to_pylist())
            raw, mu = table.column("margin_raw").to_numpy(), table.column("margin").to_numpy()
            report |= length_make_up(cls, features, len_diff, raw, mu)
        return ResultSpec(NAME, VERSION, fingerprint, params | control, ids_fingerprint(ids)), table, report


def run(store: Store, *, where: str | None = None, progress: bool = True, **config: Any) -> ScoreSummary:
    """Score every pair's preference strength with the chosen backend and write the reward_margin result
    (``RewardMarginConfig`` fields, and ``chunk_size``)."""
    return RewardMargin.run_with(store, where=where, progress=progress, **config)
