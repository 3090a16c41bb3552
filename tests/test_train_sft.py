"""SFT trainer with UAL smoothing: assistant-only labels, shard epsilons and weights, packing, LoRA,
and short real training runs of a tiny causal LM on Alpaca shards."""

from __future__ import annotations

import json
import math

import pytest
import torch

from curation.core.losses import IGNORE_INDEX, ual_token_loss
from tests.fixtures.training import sft_config
from training.shards import load_split


def test_labels_cover_assistant_tokens_only(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_tokenizer
    from training.sft import tokenize_conversations

    tok = load_tokenizer(ModelSpec(str(tiny_lm)))
    rows = load_split(real_shards, "sft", "train").slice(0, 20).to_pylist()
    cfg = sft_config(real_shards, tiny_lm, tmp_path, max_length=4096)
    items, report = tokenize_conversations(rows, tok, cfg, "sft/train")
    assert report.total == 20 and report.truncated == 0 and len(items) == 20
    for row, item in zip(rows, items, strict=True):
        supervised = [t for t in item["labels"] if t != IGNORE_INDEX]
        answer = row["messages"][-1]["content"]
        assert tok.decode(supervised) == answer + "</s>"  # the response and its end-of-turn marker only
        assert item["epsilon"] == pytest.approx(row["label_smoothing"]) and item["weight"] == row["weight"]
    short, rep = tokenize_conversations(
        rows, tok, sft_config(real_shards, tiny_lm, tmp_path, max_length=48), "x"
    )
    assert rep.truncated + rep.dropped > 0 and rep.total == 20
    assert all(len(x["input_ids"]) <= 48 for x in short)


def test_collator_packing_and_per_sample_loss(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_tokenizer
    from training.sft import SFTCollator, pack, sft_losses, tokenize_conversations

    tok = load_tokenizer(ModelSpec(str(tiny_lm)))
    rows = load_split(real_shards, "sft", "train").slice(0, 12).to_pylist()
    items, _ = tokenize_conversations(
        rows, tok, sft_config(real_shards, tiny_lm, tmp_path, max_length=256), "x"
    )
    packed = pack(items, 256, packing=True)
    assert len(packed) < len(items) and sum(len(r["samples"]) for r in packed.items) == len(items)
    batch = SFTCollator(tok.pad_token_id)([packed[0], packed[1]])
    n = len(packed[0]["samples"]) + len(packed[1]["samples"])
    assert batch["weights"].numel() == n and int(batch["segments"].max()) == n - 1
    # position ids restart at each sample
    assert int((batch["position_ids"][0] == 0).sum()) == len(packed[0]["samples"])
    torch.manual_seed(0)
    logits = torch.randn(*batch["input_ids"].shape, 40)
    batch["labels"] = batch["labels"].clamp(max=39)
    per_sample, mask = sft_losses(logits, batch)
    # sample 0 by hand: mean UAL token loss over its supervised tokens, with its own epsilon
    k = len(packed[0]["samples"][0]["input_ids"])
    lab = batch["labels"][0, 1:k]
    tok_loss = ual_token_loss(logits[0:1, : k - 1], lab[None], torch.tensor([items[0]["epsilon"]]))[0]
    assert per_sample[0].item() == pytest.approx(tok_loss[lab != IGNORE_INDEX].mean().item(), rel=1e-5)


def test_train_sft_loss_goes_down(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from training.sft import train

    out = tmp_path / "sft"
    result = train(sft_config(real_shards, tiny_lm, out, max_train_samples=16, num_train_epochs=4))
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert len(losses) == 16 and sum(losses[-3:]) < sum(losses[:3])
    m = result["metrics"]
    vocab = AutoModelForCausalLM.from_pretrained(out).config.vocab_size
    assert m["eval_samples"] > 0 and m["eval_nll"] > 0
    assert m["eval_perplexity"] == pytest.approx(math.exp(m["eval_nll"]))
    assert m["eval_token_accuracy"] > 10 / vocab  # well above a uniform guess after 4 epochs
    report = json.loads((out / "length_report.json").read_text())
    assert report["train"]["total"] == 16 and report["train"] == result["train_length_report"]


def test_train_sft_lora_packing_merged(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from training.sft import train

    def run(out):
        opts = dict(max_train_samples=24, max_steps=3, packing=True, use_lora=True, max_length=256)
        return train(sft_config(real_shards, tiny_lm, out, **opts))

    result = run(tmp_path / "lora")
    assert result["global_step"] == 3 and result["samples_trained"] > 12  # rows hold several samples
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    assert not any("lora" in k for k in merged.state_dict())
    # the same seed gives the same LoRA init and the same model, whatever ran before in the process
    run(tmp_path / "again")
    twin = AutoModelForCausalLM.from_pretrained(tmp_path / "again").state_dict()
    assert all(torch.equal(v, twin[k]) for k, v in merged.state_dict().items())
