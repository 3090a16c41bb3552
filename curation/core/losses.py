"""The trainers' losses as plain tensor functions (docs/methods.md sections 1-6), testable by hand.

Every function returns per-sample (or per-token) values; reductions and weights are explicit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------- SFT (UAL, section 1)
def ual_token_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """Per-token UAL loss ``-sum_k q(k) log softmax(z)_k`` with q = 1 - eps for the gold token and
    eps / (V - 1) for every other token; 0 where ``labels == IGNORE_INDEX``.

    logits [B, T, V] already aligned with labels [B, T] (shift before calling); epsilon [B] (one per
    sample) or [B, T] (one per token, e.g. for packed sequences).
    """
    vocab = logits.size(-1)
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = labels != IGNORE_INDEX
    gold = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    others = logp.sum(-1) - gold
    eps = epsilon.to(logp.dtype)
    if eps.dim() == 1:
        eps = eps.unsqueeze(-1).expand_as(gold)
    loss = -(1.0 - eps) * gold - eps / (vocab - 1) * others
    return loss * mask


def segment_mean(values: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` over the masked positions of each segment id (0..n-1); 0 for empty segments."""
    seg = segments[mask]
    total = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, seg, values[mask])
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
        0, seg, torch.ones_like(values[mask])
    )
    return total / count.clamp(min=1)


# ----------------------------------------------------------------------------- RESCUE (section 2)
def length_normalised_scores(
    token_logps: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """S(y|x) = sum_t log p(y_t | ...) / |y|^lambda per candidate; token_logps, mask [N, T], lam [N]."""
    m = mask.to(token_logps.dtype)
    total = (token_logps * m).sum(-1)
    length = m.sum(-1).clamp(min=1)
    return total / length.pow(lam.to(token_logps.dtype))


def hinge_ranking_loss(scores: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Per-group sum over pairs (i, j) of one group with grade_i > grade_j of max(0, S_j - S_i).

    Tied pairs contribute nothing. scores, grades, groups [N] (flattened candidates); returns [n_groups]
    indexed by group id (0..max).
    """
    better = grades[:, None] > grades[None, :]
    same = groups[:, None] == groups[None, :]
    hinge = F.relu(scores[None, :] - scores[:, None]) * (better & same)
    n = int(groups.max().item()) + 1 if groups.numel() else 0
    return torch.zeros(n, dtype=scores.dtype, device=scores.device).index_add_(0, groups, hinge.sum(1))


def ranking_pair_counts(scores: torch.Tensor, grades: torch.Tensor, groups: torch.Tensor) -> tuple[int, int]:
    """(correctly ordered pairs, ordered pairs): pairs with grade_i > grade_j and S_i > S_j; ties skipped."""
    better = (grades[:, None] > grades[None, :]) & (groups[:, None] == groups[None, :])
    right = better & (scores[:, None] > scores[None, :])
    return int(right.sum().item()), int(better.sum().item())


# ----------------------------------------------------------------------------- reward model (3-6)
def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor,
    soft_label: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair ``-(1 - a) log sigma(d) - a log sigma(-d)`` with d = r_c - r_r + bias - margin (a = soft label).

    a = 0, margin = 0 and no bias give the plain Bradley-Terry loss -log sigma(r_c - r_r). ``bias`` is a
    product-of-experts bias expert's logit for the pair (section 5), added during training only.
    """
    d = r_chosen.float() - r_rejected.float() - margin.float()
    if bias is not None:
        d = d + bias.float()
    a = soft_label.float()
    return (1.0 - a) * F.softplus(-d) + a * F.softplus(d)


def center_rewards_term(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair (r_c + r_r)^2 (as TRL's center_rewards_coefficient): keeps rewards centred on 0."""
    return (r_chosen.float() + r_rejected.float()) ** 2


def simcse_loss(h1: torch.Tensor, h2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """SimCSE InfoNCE: the positive of row i of ``h1`` is row i of ``h2``; other rows are negatives."""
    sim = F.cosine_similarity(h1.float()[:, None, :], h2.float()[None, :, :], dim=-1) / temperature
    return F.cross_entropy(sim, torch.arange(sim.size(0), device=sim.device))


def group_losses(
    per_sample: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss per group, count per group); groups absent from the batch get loss 0."""
    total = torch.zeros(n_groups, dtype=per_sample.dtype, device=per_sample.device).index_add_(
        0, groups, per_sample
    )
    count = torch.zeros(n_groups, dtype=per_sample.dtype, device=per_sample.device).index_add_(
        0, groups, torch.ones_like(per_sample)
    )
    return total / count.clamp(min=1), count


def group_dro_step(q: torch.Tensor, losses: torch.Tensor, eta: float = 0.01) -> torch.Tensor:
    """Group DRO weights: q_g <- q_g exp(eta * loss_g), renormalised to sum 1 (Sagawa et al.)."""
    q = q * torch.exp(eta * losses.detach())
    return q / q.sum()
