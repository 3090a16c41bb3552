"""RESCUE trainer: candidate scoring, the hinge + SFT loss by hand, and a real run on GSM8K/OASST rankings."""

from __future__ import annotations

import json

import pytest
import torch

from curation.core.losses import IGNORE_INDEX
from tests.fixtures.training import rescue_config
from training.shards import load_split


def test_tokenize_groups_scores_candidate_tokens_and_picks_best(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_tokenizer
    from training.rescue import GroupCollator, tokenize_groups

    tok = load_tokenizer(ModelSpec(str(tiny_lm)))
    rows = load_split(real_shards, "ranking", "train").slice(0, 30).to_pylist()
    items, report, _ = tokenize_groups(
        rows, tok, rescue_config(real_shards, tiny_lm, tmp_path, max_length=4096), "r"
    )
    assert report.total == 30 and report.truncated == 0
    by_id = {r["id"]: r for r in rows}
    for g in items:
        row = by_id[g["id"]]
        assert g["grades"][g["best"]] == max(g["grades"])
        refs = [
            i for i, ref in enumerate(row["is_reference"]) if ref and row["grades"][i] == max(row["grades"])
        ]
        if refs and len(row["candidates"]) <= 6:
            assert g["best"] == refs[0]  # the reference wins a tie at the top
        assert g["lam"] == [1.0 if ref else 0.85 for ref in row["is_reference"][: len(g["lam"])]]
    batch = GroupCollator(tok.pad_token_id)(items[:2])
    first = items[0]["seqs"][0]
    scored = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert scored == first["input_ids"][first["prompt_len"] :]
    assert tok.decode(scored).startswith(by_id[items[0]["id"]]["candidates"][0][:20])
    assert batch["groups"].tolist() == [0] * len(items[0]["seqs"]) + [1] * len(items[1]["seqs"])


def test_rescue_loss_by_hand():
    from training.rescue import rescue_losses

    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 4, -100], [-100, 0, 0, -100]])
    batch = {
        "labels": labels,
        "lam": torch.tensor([1.0, 0.85, 0.85]),
        "grades": torch.tensor([2, 1, 1]),
        "groups": torch.zeros(3, dtype=torch.long),
        "best": torch.tensor([True, False, False]),
        "weights": torch.ones(1),
    }
    loss, scores = rescue_losses(logits, batch, alpha=0.1, sft_weight=1.0)
    lp = torch.log_softmax(logits, -1)
    tok = lambda i, t: lp[i, t - 1, labels[i, t]].item()  # noqa: E731
    s0 = (tok(0, 1) + tok(0, 2) + tok(0, 3)) / 3**1.0
    s1 = tok(1, 2) / 1**0.85
    s2 = (tok(2, 1) + tok(2, 2)) / 2**0.85
    assert scores.tolist() == pytest.approx([s0, s1, s2], rel=1e-5)
    hinge = max(0.0, s1 - s0) + max(0.0, s2 - s0)  # candidates 1 and 2 tie: no pair between them
    sft = -s0  # token-mean NLL of the best candidate (lambda 1.0)
    assert loss.item() == pytest.approx(sft + 0.1 * hinge, rel=1e-5)
    only_rank, _ = rescue_losses(logits, batch, alpha=0.1, sft_weight=0.0)
    assert only_rank.item() == pytest.approx(0.1 * hinge, rel=1e-5, abs=1e-7)


def test_train_rescue_loss_goes_down_and_ranking_accuracy(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from training.rescue import train

    result = train(
        rescue_config(real_shards, tiny_lm, tmp_path / "rescue", max_train_samples=8, num_train_epochs=3)
    )
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    m, b = result["metrics"], result["metrics_before"]
    assert (
        m["eval_groups"] > 0 and m["eval_ordered_pairs"] == b["eval_ordered_pairs"] > 0
    )  # the same eval set
    right = m["eval_ranking_accuracy"] * m["eval_ordered_pairs"]  # a share of the ordered pairs
    assert right == pytest.approx(round(right), abs=1e-6)
    assert m["eval_loss"] < b["eval_loss"]
    written = json.loads((tmp_path / "rescue" / "length_report.json").read_text())["train"]
    assert written == result["train_length_report"] and written["candidates_cut"] >= 0
