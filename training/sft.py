"""SFT trainer with uncertainty-aware label smoothing (UAL, docs/methods.md section 1).

Loss on assistant tokens only (found through the tokenizer's chat template), per-sample label
smoothing epsilon and weight from the sft shard (target 1 - eps for the gold token, eps / (V - 1) for
every other token, averaged over each sample's supervised tokens), optional LoRA (peft) and optional
packing. Runs on transformers' Trainer, so ``accelerate launch`` / ``torchrun`` scale it.

    result = train(SFTConfig(shards=..., model=..., output_dir=...))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers import set_seed

from curation.core.losses import IGNORE_INDEX, segment_mean, ual_token_loss
from curation.core.models import lifted_length_limit, load_causal_lm
from curation.core.options import option
from curation.core.padding import padded_width
from training.base import ShardTrainer, load_data, start
from training.common import CurateTrainingConfig, ListDataset, ensure_chat_template, render_with_spans
from training.shards import LengthReport, read_rows

log = logging.getLogger(__name__)


@dataclass
class SFTConfig(CurateTrainingConfig):
    """UAL SFT options (plus every transformers.TrainingArguments option), docs/methods.md section 1.

    Paper defaults: LoRA r 8, alpha 16, dropout 0.1 (``--use_lora``), lr 3e-4 with LoRA, effective batch
    64, warmup 10 %; the shard's epsilons average 0.1. Without LoRA the default lr is ours (2e-5).
    """

    max_length: int = option(1024, "Maximum tokens per sample (or per packed row).")
    learning_rate: float = option(2e-5, "Learning rate (UAL paper with LoRA: 3e-4).")
    per_device_train_batch_size: int = option(4, "Rows per device per step.")
    logging_steps: float = option(10, "Log loss every N steps.")
    use_label_smoothing: bool = option(
        True, "Use each sample's UAL epsilon from the shard (off: plain cross-entropy)."
    )
    label_smoothing: float | None = option(
        None, "One epsilon for every sample instead of the shard's (e.g. 0.1)."
    )
    use_weights: bool = option(True, "Multiply each sample's loss by its shard weight.")
    packing: bool = option(
        False,
        "Pack several samples into one row of max_length tokens (position ids restart per sample; "
        "attention is only isolated with attention implementations that honour them, e.g. flash-attention).",
    )
    use_lora: bool = option(False, "Train LoRA adapters (peft) instead of all weights.")
    lora_r: int = option(8, "LoRA rank (UAL paper: 8).")
    lora_alpha: int = option(16, "LoRA alpha (UAL paper: 16).")
    lora_dropout: float = option(0.1, "LoRA dropout (UAL paper: 0.1).")
    lora_target_modules: str = option(
        "all-linear", "Modules for LoRA: 'all-linear' or a comma-separated list."
    )
    merge_lora: bool = option(
        True, "Save the LoRA-merged model (loads with plain transformers); off: adapter."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must be in [0, 1)")


# ----------------------------------------------------------------------------- data
def tokenize_conversations(
    rows: list[dict[str, Any]], tokenizer, cfg: SFTConfig, what: str
) -> tuple[list[dict[str, Any]], LengthReport]:
    """Chat-template each conversation; labels on assistant tokens; right truncation (reported)."""
    ensure_chat_template(tokenizer)
    report = LengthReport(what, cfg.max_length)
    out = []
    for r in rows:
        text, spans = render_with_spans(tokenizer, list(r["messages"]))
        with lifted_length_limit(tokenizer):  # encoded whole, cut below (and reported)
            enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [
            tok if any(s <= a < e for s, e in spans) else IGNORE_INDEX
            for tok, (a, _b) in zip(ids, offsets, strict=True)
        ]
        too_long = len(ids) > cfg.max_length
        if too_long:
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
        if (too_long and cfg.overlong == "drop") or all(x == IGNORE_INDEX for x in labels[1:]):
            report.add(r["id"], dropped=True)
            continue
        report.add(r["id"], truncated=too_long)
        eps = cfg.label_smoothing if cfg.label_smoothing is not None else float(r["label_smoothing"])
        out.append(
            {
                "id": r["id"],
                "input_ids": ids,
                "labels": labels,
                "epsilon": eps if cfg.use_label_smoothing or cfg.label_smoothing is not None else 0.0,
                "weight": float(r["weight"]) if cfg.use_weights else 1.0,
            }
        )
    report.log()
    return out, report


def pack(samples: list[dict[str, Any]], max_length: int, packing: bool) -> ListDataset:
    """Rows of samples: one sample per row, or greedy packs of consecutive samples up to max_length."""
    rows: list[list[dict[str, Any]]] = []
    for s in samples:
        if (
            packing
            and rows
            and sum(len(x["input_ids"]) for x in rows[-1]) + len(s["input_ids"]) <= max_length
        ):
            rows[-1].append(s)
        else:
            rows.append([s])
    return ListDataset([{"samples": r} for r in rows], [sum(len(x["input_ids"]) for x in r) for r in rows])


@dataclass
class SFTCollator:
    """Pads rows (right, to a multiple of ``multiple_of`` within ``limit``); per token: label, epsilon and the sample (segment) it belongs to."""

    pad_token_id: int
    multiple_of: int = 1
    limit: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(sum(len(s["input_ids"]) for s in r["samples"]) for r in rows)
        width = padded_width(longest, self.multiple_of, self.limit)
        n = len(rows)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        eps = torch.zeros((n, width))
        seg = torch.zeros((n, width), dtype=torch.long)
        weights = []
        for i, r in enumerate(rows):
            at = 0
            for s in r["samples"]:
                k = len(s["input_ids"])
                ids[i, at : at + k] = torch.tensor(s["input_ids"])
                # labels never cross a sample boundary: the first token of a sample is not predicted
                lab = torch.tensor(s["labels"])
                lab[0] = IGNORE_INDEX
                labels[i, at : at + k] = lab
                mask[i, at : at + k] = 1
                pos[i, at : at + k] = torch.arange(k)
                eps[i, at : at + k] = s["epsilon"]
                seg[i, at : at + k] = len(weights)
                weights.append(s["weight"])
                at += k
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "labels": labels,
            "epsilon": eps,
            "segments": seg,
            "weights": torch.tensor(weights),
        }


# ----------------------------------------------------------------------------- trainer
def sft_losses(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-sample UAL loss, per-token-shifted supervised mask) for a batch from SFTCollator."""
    logits = logits[:, :-1]
    labels = batch["labels"][:, 1:]
    tok = ual_token_loss(logits, labels, batch["epsilon"][:, 1:])
    mask = labels != IGNORE_INDEX
    return segment_mean(tok, mask, batch["segments"][:, 1:], batch["weights"].numel()), mask


class SFTTrainer(ShardTrainer):
    trained_key = "samples_trained"

    def _forward(self, model, inputs):
        return model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            position_ids=inputs["position_ids"],
        ).logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = self._forward(model, inputs)
        per_sample, _ = sft_losses(logits, inputs)
        loss = (per_sample * inputs["weights"]).mean()
        self.count_trained(model, int(inputs["weights"].numel()))
        return (loss, {"logits": logits}) if return_outputs else loss

    def eval_metrics(self, ds) -> dict[str, float]:
        loss_sum = nll_sum = right = tokens = n = 0.0
        for batch in self.eval_batches(ds):
            logits = self._forward(self.model, batch)
            per_sample, mask = sft_losses(logits, batch)
            loss_sum += float((per_sample * batch["weights"]).sum())
            n += batch["weights"].numel()
            labels = batch["labels"][:, 1:]
            lg = logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                lg.reshape(-1, lg.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            nll_sum += float(nll)
            right += float(((lg.argmax(-1) == labels) & mask).sum())
            tokens += float(mask.sum())
        return {
            "loss": loss_sum / max(1, n),
            "nll": nll_sum / max(1, tokens),
            "perplexity": math.exp(min(50.0, nll_sum / max(1, tokens))),
            "token_accuracy": right / max(1, tokens),
            "samples": n,
        }

    def save_final(self) -> None:
        """The LoRA-merged model (loads with plain transformers) when asked, else what Trainer saves."""
        if not (self.cfg.use_lora and self.cfg.merge_lora):
            return super().save_final()
        merged = self.accelerator.unwrap_model(self.model).merge_and_unload()
        merged.save_pretrained(self.args.output_dir)
        self.processing_class.save_pretrained(self.args.output_dir)


# ----------------------------------------------------------------------------- entry point
def load_sft(
    shards: str, split: str, tok, cfg: SFTConfig, limit: int | None
) -> tuple[ListDataset, LengthReport]:
    rows = read_rows(shards, "sft", split, limit, cfg.verify_shards)
    samples, report = tokenize_conversations(rows, tok, cfg, f"sft/{split}")
    return pack(samples, cfg.max_length, cfg.packing), report


def train(config: SFTConfig) -> dict[str, Any]:
    """Fine-tune a causal LM on the sft shards; returns metrics, length reports and the output folder."""
    spec, tok = start(config)
    data = load_data(
        config, "sft", "samples", lambda split, limit, _: load_sft(config.shards, split, tok, config, limit)
    )
    set_seed(config.seed)  # before the model and LoRA: new weights are drawn from the seeded generator
    model = load_causal_lm(spec)
    if config.use_lora:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets
                if targets == "all-linear"
                else [t.strip() for t in targets.split(",")],
            ),
        )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=SFTCollator(tok.pad_token_id, config.width_multiple(), config.max_length),
        processing_class=tok,
    )
    return trainer.run(data)
