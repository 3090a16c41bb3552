"""reward_margin: preference strength per pair (methods.md section 3, Secrets of RLHF II).

For M reward models m: d_im = r_m(x, y_chosen) - r_m(x, y_rejected); margin (mu) = mean_m d_im,
margin_std (sigma) = std_m d_im (sample std, 0 for one model). Classes: ``incorrect`` below the
first threshold, ``ambiguous`` below the second, else ``clean``. Thresholds are quantiles of mu
by default (bottom 20 % incorrect, next 20 % ambiguous) or values (``incorrect_below``,
``ambiguous_below``). ``adaptive_margin`` = margin_scale * clip(mu, 0, max_margin): the margin a
trainer puts inside the sigmoid (L = -log sigma(dr - m)); 0 for pairs the models do not support.

Backends
- ``models``: any number of pretrained reward models (AutoModelForSequenceClassification with one
  output, e.g. the folder training/rm saves). Rewards are cached per (pair, model fingerprint),
  so adding a model or new pairs scores only what is new. Input: the dialogue rendered with the
  tokenizer's chat template (else "role: content" lines), truncated from the left.
- ``crossfit``: reward models trained on the data itself, out of fold: pairs are split into K folds
  by a hash of their prompt (so no model sees the pair or its prompt), one model per fold scores
  the held-out fold, and ``repeats`` different fold assignments give M = repeats margins per pair.
  Default head on CPU: a Bradley-Terry reward head on frozen MiniLM embeddings of (last user turn +
  response) plus cheap dialogue features (``head`` = logistic (default; C = 0.005 was best in
  benchmarks/noise) | mlp). ``finetune=True`` instead
  fine-tunes the whole encoder per fold (for GPUs; by default 2 epochs at ``finetune_lr`` 5e-5, 3
  repeats, and soft labels ``finetune_soft_label`` 0.1, which make the loss robust to flipped labels:
  on HH harmless with 20 % flips, MiniLM on an H200 ranks the flips at AUROC 0.64-0.67 per repeat and
  0.673-0.683 for 3-5 repeats, against 0.595 for the length difference; benchmarks/gpu/RESULTS.md).
- ``judge``: an LLM judge behind an OpenAI-compatible endpoint (``--model NAME --param base_url=URL``)
  asks about each pair in both orders; the two orders are the models axis, so mu is the mean of the
  judge's per-order log-odds (or votes) that chosen is better, and ``judge_swap_inconsistent`` marks
  pairs whose orders disagree (NULL for the other backends). Formula, cache and options:
  curation/scoring/pairwise_judge.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.models import DEFAULT_ENCODER, ModelSpec
from curation.scoring.base import ScoreSummary, Timer, add_stats
from curation.scoring.cache import (
    CacheSpec,
    ResultSpec,
    activate,
    cached_compute,
    commit_result,
    ids_fingerprint,
)
from curation.scoring.cache import result_done as _done
from curation.scoring.schemas import REWARD_MARGIN_SCHEMA
from curation.scoring.texts import last_user_turn, load_records, plain_render, render, response_text
from schemas.ids import text_id

if TYPE_CHECKING:
    from curation.store import Store

NAME = "reward_margin"
VERSION = "1"
REWARDS_VERSION = "1"


# ------------------------------------------------------------------ combine
def classify(
    mu: np.ndarray,
    incorrect_quantile: float = 0.2,
    ambiguous_quantile: float = 0.4,
    incorrect_below: float | None = None,
    ambiguous_below: float | None = None,
) -> tuple[np.ndarray, float, float]:
    """Quality class per pair and the two thresholds used (values override quantiles)."""
    t_inc = incorrect_below if incorrect_below is not None else float(np.quantile(mu, incorrect_quantile))
    t_amb = ambiguous_below if ambiguous_below is not None else float(np.quantile(mu, ambiguous_quantile))
    if t_amb < t_inc:
        raise ValueError(f"ambiguous threshold {t_amb} is below the incorrect threshold {t_inc}")
    cls = np.where(mu < t_inc, "incorrect", np.where(mu < t_amb, "ambiguous", "clean"))
    return cls, t_inc, t_amb


def combine(
    ids: Sequence[str],
    rc: np.ndarray,
    rr: np.ndarray,
    *,
    incorrect_quantile: float = 0.2,
    ambiguous_quantile: float = 0.4,
    incorrect_below: float | None = None,
    ambiguous_below: float | None = None,
    margin_scale: float = 1.0,
    max_margin: float | None = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """The reward_margin result from per-model rewards ``rc``, ``rr`` of shape (pairs, models)."""
    rc, rr = np.atleast_2d(rc.T).T, np.atleast_2d(rr.T).T
    d = rc - rr
    m = d.shape[1]
    mu = d.mean(axis=1)
    sigma = d.std(axis=1, ddof=1) if m > 1 else np.zeros(len(mu))
    cls, t_inc, t_amb = classify(mu, incorrect_quantile, ambiguous_quantile, incorrect_below, ambiguous_below)
    adaptive = margin_scale * np.clip(mu, 0.0, max_margin if max_margin is not None else np.inf)
    table = pa.table(
        {
            "id": pa.array(list(ids), pa.string()),
            "reward_chosen": rc.mean(axis=1),
            "reward_rejected": rr.mean(axis=1),
            "margin": mu,
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
    if m > 1:
        report["model_agreement_sign"] = float((np.sign(d) == np.sign(mu)[:, None]).mean())
    return table, report


# ---------------------------------------------------------- backend: models
def model_rewards(
    store: Store, records: list[dict], spec: ModelSpec, config, progress: bool = True, chunk_size: int = 256
):
    """(table id, reward_chosen, reward_rejected aligned with records, CacheStats, fingerprint)."""
    from curation.scoring.runner import RewardModel

    rm = RewardModel(spec, config)
    params = {"max_length": rm.config.max_length, "render": "chat-template-or-plain", "bf16": rm.bf16}
    cache = CacheSpec("rewards", REWARDS_VERSION, rm.fingerprint, params)

    def compute(pos: np.ndarray) -> pa.Table:
        recs = [records[i] for i in pos]
        texts = [render(rm.tokenizer, list(r["prompt"]) + list(r["chosen"])) for r in recs]
        texts += [render(rm.tokenizer, list(r["prompt"]) + list(r["rejected"])) for r in recs]
        scores = rm.score(texts)
        return pa.table({"reward_chosen": scores[: len(recs)], "reward_rejected": scores[len(recs) :]})

    schema = pa.schema(
        [("id", pa.string()), ("reward_chosen", pa.float64()), ("reward_rejected", pa.float64())]
    )
    order = [len(plain_render(r["prompt"])) + len(response_text(r["chosen"])) for r in records]
    table, stats = cached_compute(
        store,
        cache,
        [r["id"] for r in records],
        compute,
        schema=schema,
        order=order,
        chunk_size=chunk_size,
        progress=progress,
        desc=f"rewards {spec.model}",
    )
    return table, stats, rm.fingerprint


# -------------------------------------------------------- backend: crossfit
_REFUSAL = re.compile(
    r"\b(i can(?:no|')t|i cannot|i won't|i'm (?:not able|unable|sorry)|i am (?:not able|unable|sorry)|"
    r"as an ai|i (?:do not|don't) (?:think i can|feel comfortable)|not (?:appropriate|something i))",
    re.I,
)
_LIST = re.compile(r"(^|\n)\s*(?:[-*•]\s|\d+[.)]\s|#{1,6}\s|```|\|.*\|)")
_WORDS = re.compile(r"\w+")


def dialogue_features(question: str, response: str) -> list[float]:
    """Cheap, interpretable features of one response to a question."""
    rw = _WORDS.findall(response.lower())
    qw = set(_WORDS.findall(question.lower()))
    overlap = len(qw & set(rw)) / max(1, len(qw | set(rw)))
    return [
        np.log1p(len(rw)),
        float(bool(_REFUSAL.search(response))),
        float(bool(_LIST.search(response))),
        overlap,
        float("?" in response),
        np.log1p(response.count(".") + response.count("!")),
    ]


def dialogue_feature_pairs(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``dialogue_features`` of each pair's chosen and of its rejected response to its last user turn."""
    qs = [last_user_turn(r["prompt"]) for r in records]
    dc = np.array(
        [dialogue_features(q, response_text(r["chosen"])) for q, r in zip(qs, records, strict=True)]
    )
    dr = np.array(
        [dialogue_features(q, response_text(r["rejected"])) for q, r in zip(qs, records, strict=True)]
    )
    return dc, dr


def fold_of(keys: Sequence[str], folds: int, repeat: int) -> np.ndarray:
    """Fold index per record from a hash of its key (the prompt) and the repeat number."""
    return np.array([int(text_id(k, str(repeat))[:8], 16) % folds for k in keys], dtype=np.int64)


def _fit_logistic(dx: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    x = np.vstack([dx, -dx])
    y = np.r_[np.ones(len(dx)), np.zeros(len(dx))]
    clf = LogisticRegression(C=c, fit_intercept=False, max_iter=2000, random_state=seed).fit(x, y)
    w = clf.coef_[0]
    return lambda f: f @ w


def _fit_mlp(fc: np.ndarray, fr: np.ndarray, hidden: int, epochs: int, lr: float, wd: float, seed: int):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.Linear(fc.shape[1], hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(hidden, 1),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    tc, tr = torch.as_tensor(fc, dtype=torch.float32), torch.as_tensor(fr, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(tc), generator=gen).split(128):
                loss = -torch.nn.functional.logsigmoid(net(tc[idx]) - net(tr[idx])).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()

    def reward(f: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.as_tensor(f, dtype=torch.float32))[:, 0].numpy().astype(np.float64)

    return reward


def crossfit_rewards(
    fc: np.ndarray,
    fr: np.ndarray,
    keys: Sequence[str],
    *,
    folds: int = 5,
    repeats: int = 3,
    head: str = "logistic",
    c: float = 0.005,
    hidden: int = 64,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold rewards (pairs, repeats) of chosen and rejected from features ``fc``, ``fr``."""
    if folds < 2:
        raise ValueError("crossfit needs folds >= 2")
    n = len(fc)
    rc, rr = np.full((n, repeats), np.nan), np.full((n, repeats), np.nan)
    for rep in range(repeats):
        fold = fold_of(keys, folds, rep)
        for k in range(folds):
            test, train = fold == k, fold != k
            if not test.any():
                continue
            if not train.any():
                raise ValueError(f"fold {k} holds every prompt; add data or lower --param folds")
            both = np.vstack([fc[train], fr[train]])
            mean, std = both.mean(0), both.std(0) + 1e-6
            zc, zr = (fc - mean) / std, (fr - mean) / std
            if head == "logistic":
                reward = _fit_logistic(zc[train] - zr[train], c, seed + rep)
            elif head == "mlp":
                reward = _fit_mlp(
                    zc[train], zr[train], hidden, epochs, lr, weight_decay, seed + 100 * rep + k
                )
            else:
                raise ValueError(f"unknown head {head!r}: use logistic or mlp")
            rc[test, rep], rr[test, rep] = reward(zc[test]), reward(zr[test])
    return rc, rr


def crossfit_features(store: Store, records: list[dict], embedder) -> tuple[np.ndarray, np.ndarray]:
    from curation.scoring.embeddings import pair_response_texts

    tc, tr = pair_response_texts(records)
    emb = embedder.embed(tc + tr, "pair responses")
    n = len(records)
    dc, dr = dialogue_feature_pairs(records)
    return np.hstack([emb[:n], dc]), np.hstack([emb[n:], dr])


def finetune_rewards(
    records: list[dict],
    keys: Sequence[str],
    spec: ModelSpec,
    config,
    *,
    folds: int = 5,
    repeats: int = 1,
    epochs: int = 2,
    lr: float = 5e-5,
    batch_size: int = 16,
    seed: int = 0,
    soft_label: float = 0.0,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold rewards from an encoder fine-tuned per fold (Bradley-Terry loss); meant for GPUs.

    ``soft_label`` a > 0 trains on P(chosen wins) = 1 - a instead of 1 (robust to flipped labels).
    """
    import warnings

    import torch

    from curation.scoring.runner import RewardModel, pad_batch
    from training.losses import bradley_terry_loss

    zero, soft = torch.tensor(0.0), torch.tensor(float(soft_label))  # no margin; P(chosen wins) = 1 - a
    n = len(records)
    rc, rr = np.full((n, repeats), np.nan), np.full((n, repeats), np.nan)
    enc_c = enc_r = None
    for rep in range(repeats):
        fold = fold_of(keys, folds, rep)
        for k in range(folds):
            test, train = np.nonzero(fold == k)[0], np.nonzero(fold != k)[0]
            if not len(test):
                continue
            torch.manual_seed(seed + 100 * rep + k)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rm = RewardModel(spec, config)
            tok = rm.tokenizer
            if enc_c is None:  # the same tokenizer every fold: tokenise once
                enc_c = rm.tokenize([render(tok, list(r["prompt"]) + list(r["chosen"])) for r in records])
                enc_r = rm.tokenize([render(tok, list(r["prompt"]) + list(r["rejected"])) for r in records])
            model = rm.model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=lr)
            order = sorted(train, key=lambda i: max(len(enc_c[i]), len(enc_r[i])))  # length-grouped batches
            batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            gen = np.random.default_rng(seed + k)
            with torch.enable_grad():
                for _ in range(epochs):
                    for b in gen.permutation(len(batches)):
                        idx = batches[b]
                        ids, mask = pad_batch(
                            [enc_c[i] for i in idx] + [enc_r[i] for i in idx], tok.pad_token_id
                        )
                        with rm._autocast():
                            out = model(
                                input_ids=ids.to(rm.device), attention_mask=mask.to(rm.device)
                            ).logits[:, 0]
                        loss = bradley_terry_loss(out[: len(idx)], out[len(idx) :], zero, soft).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
            model.eval()
            rc[test, rep] = rm.score_encoded([enc_c[i] for i in test])
            rr[test, rep] = rm.score_encoded([enc_r[i] for i in test])
            del rm, model, opt
    return rc, rr


# ---------------------------------------------------------------------- run
def run(
    store: Store,
    *,
    models: Sequence[str] | None = None,
    backend: str | None = None,
    where: str | None = None,
    # classes and margin
    incorrect_quantile: float = 0.2,
    ambiguous_quantile: float = 0.4,
    incorrect_below: float | None = None,
    ambiguous_below: float | None = None,
    margin_scale: float = 1.0,
    max_margin: float | None = None,
    # judge (curation/scoring/pairwise_judge.py; the key never reaches caches or manifests)
    base_url: str | None = None,
    api_key: str | None = None,
    api_key_env: str | None = None,
    concurrency: int = 8,
    timeout_s: float = 60.0,
    retries: int = 4,
    judge_logprobs: bool = True,
    top_logprobs: int = 5,
    judge_margin: str = "auto",
    # crossfit
    encoder: str = DEFAULT_ENCODER,
    folds: int = 5,
    repeats: int | None = None,
    head: str = "logistic",
    c: float = 0.005,
    hidden: int = 64,
    finetune: bool = False,
    epochs: int | None = None,
    finetune_lr: float = 5e-5,
    finetune_soft_label: float = 0.1,
    seed: int = 0,
    # runner
    device: str = "auto",
    bf16: bool | None = None,
    token_budget: int = 8192,
    max_length: int = 512,
    chunk_size: int = 256,
    progress: bool = True,
    trust_remote_code: bool = False,
    allow_network: bool = False,
) -> ScoreSummary:
    """Score every pair's preference strength with the chosen backend and write the reward_margin result."""
    from curation.scoring.runner import RunnerConfig

    if isinstance(models, str):
        models = [models]
    backend = backend or ("models" if models else "crossfit")
    config = RunnerConfig(device=device, bf16=bf16, token_budget=token_budget, max_length=max_length)
    combine_kw = {
        "incorrect_quantile": incorrect_quantile,
        "ambiguous_quantile": ambiguous_quantile,
        "incorrect_below": incorrect_below,
        "ambiguous_below": ambiguous_below,
        "margin_scale": margin_scale,
        "max_margin": max_margin,
    }
    summary = ScoreSummary(NAME, "", 0)
    with Timer() as t, store.writer_lock("score reward_margin"):
        records = load_records(store, "pair", where)
        if not records:  # nothing to score is not an error (a store may hold other kinds only)
            summary.skipped, summary.report = True, {"note": "no pairs to score"}
            return summary
        ids = [r["id"] for r in records]
        summary.records = len(ids)
        if backend == "models":
            if not models:
                raise ValueError("backend 'models' needs at least one --model")
            cols_c, cols_r, fps = [], [], []
            for m in models:
                spec = ModelSpec(m, trust_remote_code, allow_network)
                table, stats, fp = model_rewards(store, records, spec, config, progress, chunk_size)
                add_stats(summary, stats)
                cols_c.append(table.column("reward_chosen").to_numpy())
                cols_r.append(table.column("reward_rejected").to_numpy())
                fps.append(fp)
            rc, rr = np.stack(cols_c, 1), np.stack(cols_r, 1)
            fingerprint = ",".join(fps)
            params = {"backend": "models", "models": list(models), "max_length": max_length} | combine_kw
        elif backend == "crossfit":
            from curation.scoring.embeddings import Embedder

            keys = [text_id(plain_render(r["prompt"])) for r in records]
            spec = ModelSpec(encoder, trust_remote_code, allow_network)
            if finetune:
                reps = repeats or 3  # 3 repeats: +0.02-0.03 AUROC over one on HH (benchmarks/gpu)
                ep = epochs or 2  # 2 epochs at lr 5e-5: the best of four settings on HH (benchmarks/gpu)
                from curation.models import describe

                fingerprint = describe(spec)["fingerprint"]
                params = {"backend": "crossfit", "finetune": True, "folds": folds, "repeats": reps}
                params |= {"epochs": ep, "lr": finetune_lr, "seed": seed, "max_length": max_length}
                params |= {"soft_label": finetune_soft_label} | combine_kw
            else:
                reps = repeats or 3
                ep = epochs or 30
                embedder = Embedder(
                    store,
                    encoder,
                    device=device,
                    progress=progress,
                    bf16=bf16,
                    trust_remote_code=trust_remote_code,
                    allow_network=allow_network,
                )
                fingerprint = embedder.fingerprint
                params = {"backend": "crossfit", "head": head, "folds": folds, "repeats": reps, "epochs": ep}
                params |= {"c": c} if head == "logistic" else {"hidden": hidden}
                params |= {"seed": seed, "embeddings": embedder.cache.key} | combine_kw
            rspec = ResultSpec(NAME, VERSION, fingerprint, params, ids_fingerprint(ids))
            if _done(store, rspec):
                activate(store, NAME, rspec.key)
                summary.key, summary.skipped, summary.cached = rspec.key, True, len(ids)
                summary.seconds = t.seconds if hasattr(t, "seconds") else 0.0
                return _finish(summary, t)
            if finetune:
                rc, rr = finetune_rewards(
                    records,
                    keys,
                    spec,
                    config,
                    folds=folds,
                    repeats=reps,
                    epochs=ep,
                    lr=finetune_lr,
                    seed=seed,
                    soft_label=finetune_soft_label,
                    progress=progress,
                )
                summary.computed = len(ids)
            else:
                fc, fr = crossfit_features(store, records, embedder)
                add_stats(summary, embedder.stats)
                rc, rr = crossfit_rewards(
                    fc,
                    fr,
                    keys,
                    folds=folds,
                    repeats=reps,
                    head=head,
                    c=c,
                    hidden=hidden,
                    epochs=ep,
                    seed=seed,
                )
        elif backend == "judge":
            from curation.scoring.pairwise_judge import judge_margins

            jm = judge_margins(
                store,
                records,
                models,
                base_url=base_url,
                api_key=api_key,
                api_key_env=api_key_env,
                concurrency=concurrency,
                timeout_s=timeout_s,
                retries=retries,
                logprobs=judge_logprobs,
                top_logprobs=top_logprobs,
                margin_from=judge_margin,
                chunk_size=chunk_size,
                progress=progress,
            )
            add_stats(summary, jm.stats)
            (rc, rr), fingerprint, combine_kw = jm.rewards(), jm.fingerprint, jm.thresholds(combine_kw)
            params = jm.params | combine_kw
        else:
            raise ValueError(f"unknown backend {backend!r}: use models, crossfit or judge")
        table, report = combine(ids, rc, rr, **combine_kw)
        if backend == "judge":
            table, report = jm.annotate(table, report)
        rspec = ResultSpec(NAME, VERSION, fingerprint, params, ids_fingerprint(ids))
        summary.key = rspec.key
        if _done(store, rspec) and summary.computed == 0:
            activate(store, NAME, rspec.key)
            summary.skipped = True
        else:
            commit_result(store, rspec, table, report=report)
        summary.report = report
    return _finish(summary, t)


def _finish(summary: ScoreSummary, t: Timer) -> ScoreSummary:
    import time

    summary.seconds = getattr(t, "seconds", None) or (time.perf_counter() - t.start)
    return summary
