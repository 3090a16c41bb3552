"""The model runner's batching: padding, token-budget batches and per-text results that do not depend on them."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from curation.core.models import ModelSpec
from curation.core.padding import pad_batch
from curation.scoring.runner import CausalLMEntropy, RewardModel, RunnerConfig, token_batches


def test_pad_batch_rounds_up_within_the_window():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, multiple_of=8)
    assert ids.shape == (2, 8) and ids[1].tolist() == [8] + [9] * 7 and int(mask.sum()) == 4
    ids, _ = pad_batch([[1] * 10], pad_id=0, multiple_of=8, limit=12)  # 16 would pass the window
    assert ids.shape == (1, 10)
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=9, multiple_of=4, side="left")
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]] and mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def test_token_batches_cover_every_index_once_within_budget():
    lengths = [3, 50, 7, 50, 1, 20, 20, 9] * 5
    batches = token_batches(lengths, budget=100, max_batch=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100)


def _hh_texts(shared_data, n: int) -> list[str]:
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]
    return [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


def test_rewards_do_not_depend_on_the_batch(minilm, tmp_path, shared_data):
    """Scores from token-budget batches equal each text scored alone (padding and order change nothing)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(str(minilm), num_labels=1).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(tmp_path)
    texts = _hh_texts(shared_data, 12)
    # fp32: bf16 autocast (the default on CPUs with AMX or AVX512-BF16) rounds differently per batch shape
    config = RunnerConfig(device="cpu", max_length=96, token_budget=600, bf16=False)
    rm = RewardModel(ModelSpec(str(tmp_path)), config)
    batched = rm.score(texts)
    alone = np.array([rm.score([t])[0] for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert np.std(batched) > 1e-4  # different texts, different rewards
    half = RewardModel(ModelSpec(str(tmp_path)), replace(config, bf16=True)).score(texts)
    assert np.abs(half - batched).max() < 0.1 * np.std(batched)  # bf16 keeps the rewards' order and scale


def test_entropy_is_the_mean_over_response_tokens(tiny_lm, shared_data):
    """The batched, masked entropy equals a direct per-text computation over the response positions."""
    config = RunnerConfig(device="cpu", max_length=48, token_budget=200, bf16=False)  # compared with fp32
    lm = CausalLMEntropy(ModelSpec(str(tiny_lm)), config)
    with torch.no_grad():  # random weights predict ~uniformly everywhere; sharpen them so positions differ
        lm.model.get_output_embeddings().weight.mul_(40)
    with open(shared_data / "gsm8k" / "test.jsonl") as fh:
        rows = [json.loads(line) for _, line in zip(range(10), fh, strict=False)]
    # GSM8K texts are longer than max_length (left-truncated); one short text fits; "Hi" has no response: nan
    prompts = [r["question"] for r in rows] + ["What is 2 + 2?", "Hi"]
    fulls = [r["question"] + " " + r["answer"] for r in rows] + ["What is 2 + 2? It is 4.", "Hi"]
    got = lm.entropy(prompts, fulls)
    tok = lm.tokenizer
    truncated = 0
    for i, (p, f) in enumerate(zip(prompts, fulls, strict=True)):
        ids = lm.tokenize([f])[0]
        k = min(max(1, len(tok(f)["input_ids"]) - len(tok(p)["input_ids"])), len(ids) - 1)
        with torch.inference_mode():
            logp = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        ent = -(logp.exp() * logp).sum(-1)
        want = float(ent[len(ids) - 1 - k : len(ids) - 1].mean()) if k > 0 else float("nan")
        assert got[i] == pytest.approx(want, rel=1e-4, abs=1e-5, nan_ok=True), i
        truncated += len(tok(f)["input_ids"]) > 48
    assert 0 < truncated < len(fulls) - 1
    assert np.isfinite(got[:-1]).all() and np.std(got[:-1]) > 0.05
