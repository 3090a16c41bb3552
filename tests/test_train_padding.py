"""Batch widths padded to a multiple (fewer shapes on a GPU) change no loss, score or pooled vector."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.training import rescue_config, sft_config
from training.shards import load_split


def test_width_multiple_defaults_and_override(real_shards, tiny_lm, tmp_path, monkeypatch):  # noqa: F811
    from training.common import CurateTrainingConfig

    assert sft_config(real_shards, tiny_lm, tmp_path).width_multiple() == 1  # CPU: no extra padding
    assert sft_config(real_shards, tiny_lm, tmp_path, pad_to_multiple_of=16).width_multiple() == 16
    monkeypatch.setattr(CurateTrainingConfig, "device", property(lambda self: torch.device("cuda")))
    assert sft_config(real_shards, tiny_lm, tmp_path).width_multiple() == 64
    assert rescue_config(real_shards, tiny_lm, tmp_path).width_multiple() == 1  # measured: no gain there
    assert rescue_config(real_shards, tiny_lm, tmp_path, pad_to_multiple_of=8).width_multiple() == 8
    with pytest.raises(ValueError, match="pad_to_multiple_of=-8"):
        sft_config(real_shards, tiny_lm, tmp_path, pad_to_multiple_of=-8)


def test_sft_and_rescue_losses_do_not_depend_on_width_padding(real_shards, tiny_lm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_causal_lm, load_tokenizer
    from training.rescue import GroupCollator, rescue_losses, tokenize_groups
    from training.sft import SFTCollator, pack, sft_losses, tokenize_conversations

    spec = ModelSpec(str(tiny_lm))
    tok = load_tokenizer(spec)
    model = load_causal_lm(spec).eval()

    def logits(batch: dict) -> torch.Tensor:
        keys = ("input_ids", "attention_mask", "position_ids")
        with torch.no_grad():
            return model(**{k: batch[k] for k in keys if k in batch}).logits

    rows = load_split(real_shards, "sft", "train").slice(0, 6).to_pylist()
    items, _ = tokenize_conversations(
        rows, tok, sft_config(real_shards, tiny_lm, tmp_path, max_length=200), "x"
    )
    packed = pack(items, 4096, packing=False)
    plain = SFTCollator(tok.pad_token_id)(packed.items)
    wide = SFTCollator(tok.pad_token_id, multiple_of=64, limit=4096)(packed.items)
    assert plain["input_ids"].shape[1] % 64 != 0 and wide["input_ids"].shape[1] % 64 == 0
    assert torch.equal(wide["input_ids"][:, : plain["input_ids"].shape[1]], plain["input_ids"])
    loss_plain, _ = sft_losses(logits(plain), plain)
    loss_wide, _ = sft_losses(logits(wide), wide)
    assert torch.allclose(loss_plain, loss_wide, atol=1e-5)

    ranks = load_split(real_shards, "ranking", "train").slice(0, 4).to_pylist()
    groups, _, _ = tokenize_groups(
        ranks, tok, rescue_config(real_shards, tiny_lm, tmp_path, max_length=1024), "r"
    )
    plain = GroupCollator(tok.pad_token_id)(groups)
    wide = GroupCollator(tok.pad_token_id, multiple_of=48, limit=1024)(groups)
    assert wide["input_ids"].shape[1] % 48 == 0 and wide["input_ids"].shape[1] > plain["input_ids"].shape[1]
    loss_plain, s_plain = rescue_losses(logits(plain), plain, alpha=0.1, sft_weight=1.0)
    loss_wide, s_wide = rescue_losses(logits(wide), wide, alpha=0.1, sft_weight=1.0)
    assert torch.allclose(s_plain, s_wide, atol=1e-5) and torch.allclose(loss_plain, loss_wide, atol=1e-5)
    # never past the window: a width that would round past max_length stays as it is
    capped = GroupCollator(tok.pad_token_id, multiple_of=1000, limit=plain["input_ids"].shape[1])(groups)
    assert capped["input_ids"].shape == plain["input_ids"].shape


def test_rm_rewards_and_pooled_vector_do_not_depend_on_padding(real_shards, minilm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_sequence_classifier
    from training.rm import HeadInput, PairCollator, _tokenizer, load_pairs

    spec = ModelSpec(str(minilm))
    tok = _tokenizer(spec, 48)
    ds, _ = load_pairs(str(real_shards), "train", tok, 48, "truncate", 6)
    model = load_sequence_classifier(spec).eval()
    plain = PairCollator(tok.pad_token_id)(ds.items)
    wide = PairCollator(tok.pad_token_id, "right", 32, 64)(ds.items)
    assert plain["input_ids"].shape[1] % 32 != 0 and wide["input_ids"].shape[1] == 64
    with torch.no_grad():
        r_plain = model(plain["input_ids"], plain["attention_mask"]).logits[:, 0]
        r_wide = model(wide["input_ids"], wide["attention_mask"]).logits[:, 0]
    assert torch.allclose(r_plain, r_wide, atol=1e-4)
    left = PairCollator(tok.pad_token_id, "left", 32, 64)(ds.items)
    assert torch.equal(left["attention_mask"].flip(1), wide["attention_mask"])

    class Decoder(torch.nn.Module):  # a decoder's "score" head reads the last real token
        def __init__(self) -> None:
            super().__init__()
            self.score = torch.nn.Linear(3, 1)

    decoder = Decoder()
    head = HeadInput(decoder)
    states = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    decoder.score(states)  # the pre-hook keeps what the head is called with
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(head.pooled(right), states[[0, 1], [2, 4]])
    assert torch.equal(head.pooled(right.flip(1)), states[[0, 1], [4, 4]])
