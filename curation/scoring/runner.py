"""The model runner shared by the model-based scorers.

One job: turn many texts into numbers with as little wasted compute as possible.
Texts are tokenised once (truncated from the LEFT, so the response being judged
survives), sorted by length and cut into batches by a *token budget* (batch size
x longest sequence <= budget), so a batch of short texts is large and a batch of
long ones is small and padding is minimal. The forward runs under
``torch.inference_mode`` and, where the hardware has it (see
``curation.core.models.bf16_supported``), bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.core.models import (
    ModelSpec,
    bf16_supported,
    describe,
    encode_untruncated,
    load_tokenizer,
    pick_device,
)
from curation.core.padding import pad_batch


@dataclass
class RunnerConfig:
    device: str = "auto"
    bf16: bool | None = None  # None: use bf16 where bf16_supported(device) says it pays
    token_budget: int = 8192  # padded tokens per forward batch
    max_length: int = 512  # tokens per text; longer texts lose their START (left truncation)
    max_batch: int = 256
    threads: int | None = None  # torch CPU threads (None: torch's default)


def token_batches(lengths: Sequence[int], budget: int, max_batch: int = 256) -> list[np.ndarray]:
    """Indexes grouped into batches, longest first, each with len(batch) * max_len <= budget (at least 1)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch, budget // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


class _Base:
    def __init__(self, spec: ModelSpec, config: RunnerConfig | None = None) -> None:
        import torch

        self.spec = spec
        self.config = config or RunnerConfig()
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.device = pick_device(self.config.device)
        self.bf16 = bf16_supported(self.device) if self.config.bf16 is None else self.config.bf16
        self.identity = describe(spec)
        self.tokenizer = load_tokenizer(spec)
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    @property
    def fingerprint(self) -> str:
        return self.identity["fingerprint"]

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.config.max_length, add_special_tokens=True
        )
        return enc["input_ids"]

    def _autocast(self):
        import contextlib

        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    @staticmethod
    def collect(pending: list[tuple[np.ndarray, Any]], n: int) -> np.ndarray:
        """Per-batch results left on the device, copied back once (no sync per batch), at their indexes."""
        out = np.empty(n, dtype=np.float64)
        for idx, values in pending:
            out[idx] = values.cpu().numpy()
        return out

    def batches(self, encoded: Sequence[Sequence[int]]) -> Iterator[tuple[np.ndarray, Any, Any]]:
        """(indexes, input_ids, attention_mask) per token-budget batch, on the device.

        On CUDA the host tensors are pinned and copied asynchronously, so the host pads batch k+1
        while the GPU runs batch k (callers must not synchronise per batch either).
        """
        cuda = self.device.startswith("cuda")
        for idx in token_batches([len(s) for s in encoded], self.config.token_budget, self.config.max_batch):
            ids, mask = pad_batch(
                [encoded[i] for i in idx],
                self.tokenizer.pad_token_id,
                multiple_of=8 if cuda else 1,
                limit=self.config.max_length,
            )
            if cuda:
                ids, mask = ids.pin_memory(), mask.pin_memory()
            yield idx, ids.to(self.device, non_blocking=cuda), mask.to(self.device, non_blocking=cuda)


class RewardModel(_Base):
    """A scalar reward model: any AutoModelForSequenceClassification folder with one output."""

    def __init__(self, spec: ModelSpec, config: RunnerConfig | None = None) -> None:
        super().__init__(spec, config)
        from transformers import AutoModelForSequenceClassification

        from curation.core.models import _kwargs

        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(spec.path()), num_labels=1, output_loading_info=True, **_kwargs(spec)
        )
        self.untrained_head = bool(info.get("missing_keys"))
        if self.untrained_head:
            import warnings

            warnings.warn(
                f"{spec.model}: the score head was not in the checkpoint ({sorted(info['missing_keys'])[:3]}...) "
                "and is randomly initialised; its rewards mean nothing. Point --model at a trained reward model.",
                stacklevel=2,
            )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model = model.to(self.device).eval()

    def score_encoded(self, encoded: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        pending = []  # (indexes, rewards on the device)
        with torch.inference_mode(), self._autocast():
            for idx, ids, mask in self.batches(encoded):
                pending.append((idx, self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float()))
        return self.collect(pending, len(encoded))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return self.score_encoded(self.tokenize(texts))


class CausalLMEntropy(_Base):
    """Mean predictive entropy (nats) of a causal LM over the response tokens of each conversation."""

    def __init__(self, spec: ModelSpec, config: RunnerConfig | None = None) -> None:
        super().__init__(spec, config)
        from curation.core.models import load_causal_lm

        self.model = load_causal_lm(spec).to(self.device).eval()

    def entropy(self, prompts: Sequence[str], fulls: Sequence[str]) -> np.ndarray:
        """``fulls[i]`` is ``prompts[i]`` followed by the response; entropy is averaged over the response."""
        import torch

        untrunc = encode_untruncated(self.tokenizer, fulls)
        # only the texts over max_length are encoded again, truncated (a shorter one encodes the same)
        full_ids = list(untrunc)
        long = [i for i, u in enumerate(untrunc) if len(u) > self.config.max_length]
        for i, ids in zip(long, self.tokenize([fulls[i] for i in long]) if long else [], strict=True):
            full_ids[i] = ids
        prompt_ids = encode_untruncated(self.tokenizer, prompts)
        n_resp = [max(1, len(u) - len(p)) for u, p in zip(untrunc, prompt_ids, strict=True)]
        lengths = np.array([len(f) for f in full_ids], dtype=np.int64)
        k = np.minimum(np.array(n_resp, dtype=np.int64), lengths - 1)  # predictions of response tokens
        pending = []
        with torch.inference_mode(), self._autocast():
            for idx, ids, mask in self.batches(full_ids):
                logp = torch.log_softmax(
                    self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1
                )
                ent = -(logp.exp() * logp).sum(-1)  # [B, T]: entropy of the prediction of token t+1
                # positions length-1-k .. length-2 predict the k response tokens
                end = torch.as_tensor(lengths[idx] - 1, device=ent.device)[:, None]
                start = end - torch.as_tensor(k[idx], device=ent.device)[:, None]
                pos = torch.arange(ent.shape[1], device=ent.device)[None, :]
                sel = ((pos >= start) & (pos < end)).float()
                pending.append((idx, (ent * sel).sum(1) / sel.sum(1)))  # 0/0 = nan where k == 0
        return self.collect(pending, len(fulls))


class TokenCounter:
    """Token lengths with a model's tokenizer (no model weights needed)."""

    def __init__(self, spec: ModelSpec) -> None:
        from curation.core.models import fingerprint, resolve

        self.spec = spec
        self.tokenizer = load_tokenizer(spec)
        self.fingerprint = fingerprint(resolve(spec.model, spec.allow_network))

    def count(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0, dtype=np.int64)
        enc = encode_untruncated(self.tokenizer, texts, add_special_tokens=False)
        return np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
