"""The trainers' losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from curation.core.losses import (
    IGNORE_INDEX,
    bradley_terry_loss,
    center_rewards_term,
    group_dro_step,
    group_losses,
    hinge_ranking_loss,
    length_normalised_scores,
    ranking_pair_counts,
    segment_mean,
    simcse_loss,
    ual_token_loss,
)


def sp(x: float) -> float:  # softplus = -log sigma(-x)
    return math.log1p(math.exp(x))


def test_ual_smoothing_uses_v_minus_1_divisor():
    probs = torch.tensor([0.5, 0.25, 0.25])
    logits = probs.log().view(1, 1, 3)
    labels = torch.tensor([[0]])
    loss = ual_token_loss(logits, labels, torch.tensor([0.2]))
    # q = [0.8, 0.2/2, 0.2/2]
    expected = -(0.8 * math.log(0.5) + 0.1 * math.log(0.25) + 0.1 * math.log(0.25))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # the /V variant (torch's label_smoothing) differs: that is not the UAL formula
    torch_ls = F.cross_entropy(logits.view(1, 3), labels.view(1), label_smoothing=0.2)
    assert abs(torch_ls.item() - expected) > 1e-3


def test_ual_zero_epsilon_is_cross_entropy_and_ignores_masked_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[1, 2, IGNORE_INDEX, 3], [IGNORE_INDEX, IGNORE_INDEX, 5, 6]])
    tok = ual_token_loss(logits, labels, torch.zeros(2))
    ce = F.cross_entropy(logits.view(-1, 7), labels.view(-1), reduction="none").view(2, 4)
    assert torch.allclose(tok, ce, atol=1e-6)
    assert tok[0, 2] == 0 and tok[1, 0] == 0
    per_sample = segment_mean(tok, labels != IGNORE_INDEX, torch.tensor([[0] * 4, [1] * 4]), 2)
    assert per_sample[0].item() == pytest.approx(ce[0, [0, 1, 3]].mean().item(), abs=1e-6)
    assert per_sample[1].item() == pytest.approx(ce[1, 2:].mean().item(), abs=1e-6)


def test_ual_per_token_epsilon_matches_per_sample():
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 3, 5), torch.tensor([[0, 1, 2], [3, 4, 0]])
    eps = torch.tensor([0.1, 0.3])
    assert torch.allclose(
        ual_token_loss(logits, labels, eps), ual_token_loss(logits, labels, eps[:, None].expand(2, 3))
    )


def test_hinge_ranking_ignores_ties():
    scores = torch.tensor([1.0, 2.0, 0.5, 3.0])
    grades = torch.tensor([2, 1, 1, 0])
    groups = torch.zeros(4, dtype=torch.long)
    # (0,1): 1.0  (0,2): 0  (0,3): 2.0  (1,3): 1.0  (2,3): 2.5 ; tie (1,2) contributes nothing
    assert hinge_ranking_loss(scores, grades, groups).tolist() == pytest.approx([6.5])
    assert ranking_pair_counts(scores, grades, groups) == (1, 5)  # only (0,2) is ordered right


def test_hinge_ranking_keeps_groups_apart():
    scores = torch.tensor([0.0, 1.0, 5.0, 0.0])
    grades = torch.tensor([1, 0, 1, 0])
    groups = torch.tensor([0, 0, 1, 1])
    # a cross-group pair (3 vs 0: grade 0 vs 1) must not count
    assert hinge_ranking_loss(scores, grades, groups).tolist() == pytest.approx([1.0, 0.0])


def test_length_normalisation_lambda():
    logps = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    s = length_normalised_scores(logps, mask, torch.tensor([1.0, 0.85]))
    assert s.tolist() == pytest.approx([-1.0, -4.0 / 2**0.85])


def test_bradley_terry_margin_and_soft_label():
    one = torch.tensor
    # plain BT
    assert bradley_terry_loss(one([1.0]), one([0.0]), one([0.0]), one([0.0])).item() == pytest.approx(
        sp(-1.0)
    )
    # margin inside the sigmoid: -log sigma(1 - 0.5)
    assert bradley_terry_loss(one([1.0]), one([0.0]), one([0.5]), one([0.0])).item() == pytest.approx(
        sp(-0.5)
    )
    # soft label a = 0.1 with margin: 0.9 * -log sigma(0.5) + 0.1 * -log sigma(-0.5)
    got = bradley_terry_loss(one([1.0]), one([0.0]), one([0.5]), one([0.1])).item()
    assert got == pytest.approx(0.9 * sp(-0.5) + 0.1 * sp(0.5))
    assert center_rewards_term(one([1.0]), one([-3.0])).item() == pytest.approx(4.0)


def test_simcse_by_hand():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # cos sims: diag 1, off-diag 0; tau = 1 -> -log(e / (e + 1))
    assert simcse_loss(h, h, temperature=1.0).item() == pytest.approx(sp(-1.0))


def test_group_dro_weights():
    per_sample = torch.tensor([1.0, 3.0, 0.5])
    losses, counts = group_losses(per_sample, torch.tensor([0, 0, 2]), 3)
    assert losses.tolist() == pytest.approx([2.0, 0.0, 0.5]) and counts.tolist() == [2, 0, 1]
    q = group_dro_step(torch.full((3,), 1 / 3), losses, eta=0.01)
    z = math.exp(0.02) + 1 + math.exp(0.005)
    assert q.tolist() == pytest.approx([math.exp(0.02) / z, 1 / z, math.exp(0.005) / z])
    assert (q @ losses).item() == pytest.approx((2 * math.exp(0.02) + 0.5 * math.exp(0.005)) / z)


def test_sorted_bucket_sampler_batches_neighbours_in_length():
    from training.common import SortedBucketSampler

    lengths = [(i * 37) % 101 for i in range(203)]  # 203 = 25 batches of 8 + 3
    sampler = SortedBucketSampler(lengths, 8, seed=1)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(203)) and first != second  # every index once; reshuffled per epoch
    chunks = [first[i : i + 8] for i in range(0, 203, 8)]
    ordered = sorted(lengths)
    for chunk in chunks[:-1]:
        lo, hi = min(lengths[i] for i in chunk), max(lengths[i] for i in chunk)
        # each DataLoader chunk is one sorted bucket: 8 consecutive values of the sorted lengths
        assert any(ordered[k] == lo and ordered[k + 7] == hi for k in range(0, 200, 8))
    assert len(chunks[-1]) == 3


def test_sorted_bucket_sampler_draws_in_proportion_to_weights():
    from training.common import SortedBucketSampler

    lengths = [i % 17 for i in range(400)]
    weights = [0.0 if i < 100 else (3.0 if i >= 300 else 1.0) for i in range(400)]
    first = list(SortedBucketSampler(lengths, 8, seed=2, weights=weights))
    assert first == list(SortedBucketSampler(lengths, 8, seed=2, weights=weights))  # seeded
    assert len(first) == 400 and min(first) >= 100  # weight 0: never drawn
    heavy = sum(i >= 300 for i in first) / len(first)
    assert 0.6 < heavy < 0.9  # expected 3 / (3 + 1) = 0.75
