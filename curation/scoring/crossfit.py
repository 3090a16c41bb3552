"""Cross-fitted reward heads for the reward_margin scorer (methods.md sections 3 and 5).

Pairs are split into K folds by a hash of their prompt (``fold_of``), so no head scores a pair or its
prompt that it was trained on; ``repeats`` fold assignments give M out-of-fold rewards per response.

- ``crossfit_rewards``: a Bradley-Terry head (logistic or MLP) on per-response features (frozen
  embeddings + dialogue features). Given ``bias`` (pair length features), the head is a product of
  experts (Shen et al. 2023, "Loose lips sink ships"): a linear bias expert on the length features is
  trained jointly with the content head on P(chosen wins) = sigma(r_content(c) - r_content(r) + bias),
  with a weaker penalty (logistic) or a 3x learning rate and no weight decay (MLP) so that it takes up
  whatever length explains first; only the content head's rewards are returned.
- ``residualise``: cross-fitted removal of the part of a margin that the length features explain
  linearly (for margins from reward models that cannot be retrained: pretrained or fine-tuned).
- ``finetune_rewards``: an encoder fine-tuned per fold (GPU).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from curation.core.models import ModelSpec
from curation.scoring.texts import last_user_turn, render, response_text
from schemas.ids import text_id

_REFUSAL = re.compile(
    r"\b(i can(?:no|')t|i cannot|i won't|i'm (?:not able|unable|sorry)|i am (?:not able|unable|sorry)|"
    r"as an ai|i (?:do not|don't) (?:think i can|feel comfortable)|not (?:appropriate|something i))",
    re.I,
)
_LIST = re.compile(r"(^|\n)\s*(?:[-*•]\s|\d+[.)]\s|#{1,6}\s|```|\|.*\|)")
_WORDS = re.compile(r"\w+")


# ---------------------------------------------------------------- features
def dialogue_features(question: str, response: str) -> list[float]:
    """Cheap, interpretable features of one response to a question (length and format included)."""
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


def content_features(question: str, response: str) -> list[float]:
    """``dialogue_features`` without the length and format cues (word and sentence counts, lists).

    What remains: a refusal phrase, a question back to the user, and the share of the question's words
    the response repeats (over the question's words only, so a longer answer does not dilute it).
    """
    rw = set(_WORDS.findall(response.lower()))
    qw = set(_WORDS.findall(question.lower()))
    return [float(bool(_REFUSAL.search(response))), float("?" in response), len(qw & rw) / max(1, len(qw))]


def _feature_pairs(records: list[dict], fn) -> tuple[np.ndarray, np.ndarray]:
    qs = [last_user_turn(r["prompt"]) for r in records]
    dc = np.array([fn(q, response_text(r["chosen"])) for q, r in zip(qs, records, strict=True)])
    dr = np.array([fn(q, response_text(r["rejected"])) for q, r in zip(qs, records, strict=True)])
    return dc, dr


def dialogue_feature_pairs(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``dialogue_features`` of each pair's chosen and of its rejected response to its last user turn."""
    return _feature_pairs(records, dialogue_features)


def content_feature_pairs(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``content_features`` of each pair's chosen and rejected response."""
    return _feature_pairs(records, content_features)


def response_embeddings(records: list[dict], embedder) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of (last user turn + chosen response) and of (... + rejected response), per pair."""
    from curation.scoring.embeddings import pair_response_texts

    tc, tr = pair_response_texts(records)
    emb = embedder.embed(tc + tr, "pair responses")
    return emb[: len(records)], emb[len(records) :]


def crossfit_features(
    records: list[dict], emb_chosen: np.ndarray, emb_rejected: np.ndarray, content_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-response features (chosen, rejected): the embeddings + ``dialogue_features``, or
    ``content_features`` when ``content_only`` (the content head of the length-controlled scorer)."""
    dc, dr = content_feature_pairs(records) if content_only else dialogue_feature_pairs(records)
    return np.hstack([emb_chosen, dc]), np.hstack([emb_rejected, dr])


# ------------------------------------------------------------------- folds
def fold_of(keys: Sequence[str], folds: int, repeat: int) -> np.ndarray:
    """Fold index per record from a hash of its key (the prompt) and the repeat number."""
    return np.array([int(text_id(k, str(repeat))[:8], 16) % folds for k in keys], dtype=np.int64)


def _rms_scale(x: np.ndarray) -> np.ndarray:
    """Per-column root mean square (antisymmetric features are scaled, never centred); 1 for zero columns."""
    rms = np.sqrt((x**2).mean(0)) if len(x) else np.ones(x.shape[1])
    return np.where(rms > 1e-12, rms, 1.0)


# ------------------------------------------------------------------- heads
def _fit_logistic(dx: np.ndarray, c: float, seed: int, bias: np.ndarray | None = None, c_bias: float = 1.0):
    """A Bradley-Terry logistic head on feature differences ``dx``; its reward is f @ w.

    With ``bias`` (pair features), the bias expert's columns join the fit scaled by sqrt(c_bias / c),
    which gives them the penalty of C = c_bias while the content weights keep C = c.
    """
    from sklearn.linear_model import LogisticRegression

    x, solver = dx, "lbfgs"
    if bias is not None:  # the scaled columns slow L-BFGS down 4x; Newton steps do not mind them
        x, solver = np.hstack([dx, bias * np.sqrt(c_bias / c)]), "newton-cholesky"
    x = np.vstack([x, -x])
    y = np.r_[np.ones(len(dx)), np.zeros(len(dx))]
    clf = LogisticRegression(C=c, fit_intercept=False, max_iter=2000, random_state=seed, solver=solver).fit(
        x, y
    )
    w = clf.coef_[0][: dx.shape[1]]
    return lambda f: f @ w


def _bias_only_weights(bias: np.ndarray, c_bias: float, seed: int) -> np.ndarray:
    """Bradley-Terry logistic weights of the pair features ``bias`` alone (no content)."""
    from sklearn.linear_model import LogisticRegression

    x, y = np.vstack([bias, -bias]), np.r_[np.ones(len(bias)), np.zeros(len(bias))]
    return (
        LogisticRegression(C=c_bias, fit_intercept=False, max_iter=2000, random_state=seed).fit(x, y).coef_[0]
    )


def _fit_mlp(
    fc: np.ndarray,
    fr: np.ndarray,
    hidden: int,
    epochs: int,
    lr: float,
    wd: float,
    seed: int,
    bias: np.ndarray | None = None,
    c_bias: float = 1.0,
):
    """An MLP Bradley-Terry head; with ``bias``, plus a linear bias expert trained jointly (started at the
    length-only fit, lr x 3, no weight decay)."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.Linear(fc.shape[1], hidden),
        torch.nn.GELU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(hidden, 1),
    )
    groups = [{"params": net.parameters(), "lr": lr, "weight_decay": wd}]
    tb = None
    if bias is not None:
        expert = torch.nn.Linear(bias.shape[1], 1, bias=False)  # odd in the features: a swap negates it
        with torch.no_grad():  # it starts where length alone gets, so the content head sees only the rest
            expert.weight[0] = torch.as_tensor(_bias_only_weights(bias, c_bias, seed), dtype=torch.float32)
        groups.append({"params": expert.parameters(), "lr": 3 * lr, "weight_decay": 0.0})
        tb = torch.as_tensor(bias, dtype=torch.float32)
    opt = torch.optim.AdamW(groups)
    tc, tr = torch.as_tensor(fc, dtype=torch.float32), torch.as_tensor(fr, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            net.train()
            for idx in torch.randperm(len(tc), generator=gen).split(128):
                d = net(tc[idx]) - net(tr[idx])
                if tb is not None:
                    d = d + expert(tb[idx])
                loss = -torch.nn.functional.logsigmoid(d).mean()
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
    bias: np.ndarray | None = None,
    c_bias: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold rewards (pairs, repeats) of chosen and rejected from features ``fc``, ``fr``.

    ``bias`` (pairs, k), antisymmetric pair features such as ``pair_length_features``, makes the head a
    product of experts: a bias expert on them is trained jointly and dropped; the rewards returned are
    the content head's alone.
    """
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
            zb = None if bias is None else bias[train] / _rms_scale(bias[train])
            if head == "logistic":
                reward = _fit_logistic(zc[train] - zr[train], c, seed + rep, zb, c_bias)
            elif head == "mlp":
                reward = _fit_mlp(
                    zc[train], zr[train], hidden, epochs, lr, weight_decay, seed + 100 * rep + k, zb, c_bias
                )
            else:
                raise ValueError(f"unknown head {head!r}: use logistic or mlp")
            rc[test, rep], rr[test, rep] = reward(zc[test]), reward(zr[test])
    return rc, rr


def residualise(
    d: np.ndarray, features: np.ndarray, keys: Sequence[str], folds: int = 5, ridge: float = 1e-3
) -> np.ndarray:
    """``d`` (pairs, models) minus its out-of-fold linear prediction from ``features`` (pairs, k).

    Per fold (by prompt hash, as the heads), a ridge regression without intercept is fitted on the other
    folds and its prediction subtracted from the held-out pairs (their features clipped to the range seen
    in training, so a rare extreme pair is not extrapolated): a pair whose responses have the same length
    and format keeps its margin, and the length features cannot predict what is left (linearly).
    """
    d = np.asarray(d, dtype=np.float64)
    one = d.ndim == 1
    d2 = d[:, None] if one else d
    if folds < 2:
        raise ValueError("length control needs folds >= 2")
    fold = fold_of(keys, folds, 0)
    out = np.empty_like(d2)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():
            raise ValueError(
                f"fold {k} holds every prompt, so the length control cannot be fitted out of fold; "
                "add pairs with other prompts or pass --param length_control=false"
            )
        scale = _rms_scale(features[train])
        x = features[train] / scale
        gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
        beta = np.linalg.solve(gram, x.T @ d2[train])
        held_out = np.clip(features[test], features[train].min(0), features[train].max(0))  # no extrapolation
        out[test] = d2[test] - (held_out / scale) @ beta
    return out[:, 0] if one else out


# --------------------------------------------------------------- fine-tune
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

    from curation.core.losses import bradley_terry_loss
    from curation.core.padding import pad_batch
    from curation.scoring.runner import RewardModel

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
