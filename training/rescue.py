"""RESCUE ranking trainer (docs/methods.md section 2) on transformers' Trainer.

Each ranking-shard row is a prompt with k graded candidates (a partial order: equal grades are
ties). A candidate's score is its length-normalised log-probability S = sum_t log p(y_t) / |y|^lambda
(lambda 1.0 for the reference, 0.85 for others). The loss per group is
``sft_weight * L_SFT(best candidate) + alpha * sum_{grade_i > grade_j} max(0, S_j - S_i)``; tied pairs
contribute nothing. Metric: ranking accuracy (correctly ordered pairs) on held-out groups.

    result = train(RescueConfig(shards=..., model=..., output_dir=...))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import set_seed

from curation.core.losses import (
    IGNORE_INDEX,
    hinge_ranking_loss,
    length_normalised_scores,
    ranking_pair_counts,
)
from curation.core.models import encode_untruncated, load_causal_lm
from curation.core.options import option
from curation.core.padding import pad_batch
from training.base import ShardTrainer, load_data, start
from training.common import CurateTrainingConfig, ListDataset, ensure_chat_template
from training.shards import LengthReport, read_rows

log = logging.getLogger(__name__)


@dataclass
class RescueConfig(CurateTrainingConfig):
    """RESCUE options (plus every transformers.TrainingArguments option), docs/methods.md section 2.

    Paper defaults: lr 2e-5, cosine, 1 epoch (``--num_train_epochs 1``; TrainingArguments' 3 is kept),
    max length 512, 2-6 candidates per prompt, alpha 0.1, lambda 1.0 (reference) and 0.85 (others).
    """

    # A batch's row count varies with its groups' candidates, so rounding widths leaves most shapes new:
    # on an H200 it did not speed up the first epoch and cost about 9 % once warm (benchmarks/gpu).
    cuda_width_multiple: ClassVar[int] = 1

    max_length: int = option(512, "Maximum tokens per prompt + candidate (paper: 512).")
    learning_rate: float = option(2e-5, "Learning rate (paper: 2e-5).")
    lr_scheduler_type: str = option("cosine", "Scheduler (paper: cosine).")
    per_device_train_batch_size: int = option(
        1, "Groups (prompts with all their candidates) per device per step."
    )
    logging_steps: float = option(10, "Log loss every N steps.")
    alpha: float = option(0.1, "Weight of the ranking loss (paper: 0.1).")
    sft_weight: float = option(1.0, "Weight of the SFT loss on the best candidate (0 = ranking only).")
    lambda_reference: float = option(1.0, "Length-normalisation exponent, reference.")
    lambda_candidate: float = option(0.85, "Length-normalisation exponent, others.")
    max_candidates: int = option(
        6, "Most candidates per group (paper: 2-6); extra ones are cut, lowest grades first."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_candidates < 2:
            raise ValueError("max_candidates must be at least 2 (a ranking needs two candidates)")


# ----------------------------------------------------------------------------- data
def tokenize_groups(
    rows: list[dict[str, Any]], tokenizer, cfg: RescueConfig, what: str
) -> tuple[list[dict[str, Any]], LengthReport, int]:
    """Prompt + each candidate as one sequence; the candidate's tokens are scored. Over-long sequences
    lose the start of the prompt first, then the end of the candidate (both reported)."""
    ensure_chat_template(tokenizer)
    report = LengthReport(what, cfg.max_length)
    out, cut_candidates = [], 0
    for r in rows:
        order = sorted(range(len(r["candidates"])), key=lambda i: -r["grades"][i])
        keep = sorted(order[: cfg.max_candidates])
        cut_candidates += len(r["candidates"]) - len(keep)
        if len({r["grades"][i] for i in keep}) < 2:
            report.add(r["id"], dropped=True)  # all ties: nothing to rank
            continue
        prompt_text = tokenizer.apply_chat_template(
            list(r["prompt"]), tokenize=False, add_generation_prompt=True
        )
        prompt_ids = encode_untruncated(tokenizer, [prompt_text], add_special_tokens=False)[0]
        seqs, truncated = [], False
        for i in keep:
            full = tokenizer.apply_chat_template(
                list(r["prompt"]) + [{"role": "assistant", "content": r["candidates"][i]}], tokenize=False
            )
            if not full.startswith(prompt_text):
                raise ValueError(f"{r['id']}: the chat template does not extend the prompt with the answer")
            cand_ids = encode_untruncated(tokenizer, [full[len(prompt_text) :]], add_special_tokens=False)[0]
            p_ids = prompt_ids
            if len(p_ids) + len(cand_ids) > cfg.max_length:
                truncated = True
                cand_ids = cand_ids[: cfg.max_length - 1]
                p_ids = p_ids[-(cfg.max_length - len(cand_ids)) :]
            seqs.append({"prompt_len": len(p_ids), "input_ids": p_ids + cand_ids})
        if truncated and cfg.overlong == "drop":
            report.add(r["id"], dropped=True)
            continue
        report.add(r["id"], truncated=truncated)
        grades = [int(r["grades"][i]) for i in keep]
        refs = [bool(r["is_reference"][i]) for i in keep]
        top = max(grades)
        best = min((i for i, g in enumerate(grades) if g == top), key=lambda i: (not refs[i], i))
        out.append(
            {
                "id": r["id"],
                "seqs": seqs,
                "grades": grades,
                "lam": [cfg.lambda_reference if ref else cfg.lambda_candidate for ref in refs],
                "best": best,
                "weight": float(r["weight"]),
            }
        )
    report.log()
    if cut_candidates:
        log.warning(
            "%s: %d candidates beyond max_candidates=%d were left out",
            what,
            cut_candidates,
            cfg.max_candidates,
        )
    return out, report, cut_candidates


@dataclass
class GroupCollator:
    """Flattens the candidates of all groups into one right-padded batch (width rounded up to a multiple of
    ``multiple_of`` within ``limit``) with their group ids."""

    pad_token_id: int
    multiple_of: int = 1
    limit: int | None = None

    def __call__(self, groups: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [s for g in groups for s in g["seqs"]]
        ids, mask = pad_batch([s["input_ids"] for s in seqs], self.pad_token_id, self.multiple_of, self.limit)
        prompt_len = torch.tensor([s["prompt_len"] for s in seqs])
        scored = mask.bool() & (torch.arange(ids.size(1)) >= prompt_len[:, None])  # the candidate's tokens
        labels = torch.where(scored, ids, IGNORE_INDEX)
        best = torch.zeros(len(seqs), dtype=torch.bool)
        at = 0
        for g in groups:
            best[at + g["best"]] = True
            at += len(g["seqs"])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "groups": torch.tensor([gi for gi, g in enumerate(groups) for _ in g["seqs"]]),
            "grades": torch.tensor([x for g in groups for x in g["grades"]]),
            "lam": torch.tensor([x for g in groups for x in g["lam"]], dtype=torch.float32),
            "best": best,
            "weights": torch.tensor([g["weight"] for g in groups]),
        }


# ----------------------------------------------------------------------------- trainer
def candidate_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p of each label (shifted) and the mask of scored tokens, both [N, T-1]."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def rescue_losses(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], alpha: float, sft_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-group loss, candidate scores S) for a batch from GroupCollator."""
    logp, mask = candidate_logps(logits, batch["labels"])
    scores = length_normalised_scores(logp, mask, batch["lam"])
    rank = hinge_ranking_loss(scores, batch["grades"], batch["groups"])
    nll = -(logp.sum(-1) / mask.sum(-1).clamp(min=1))  # per-candidate token-mean NLL
    n_groups = batch["weights"].numel()
    sft = torch.zeros(n_groups, dtype=nll.dtype, device=nll.device).index_add_(
        0, batch["groups"][batch["best"]], nll[batch["best"]]
    )
    return sft_weight * sft + alpha * rank, scores


class RescueTrainer(ShardTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        per_group, scores = rescue_losses(logits, inputs, self.cfg.alpha, self.cfg.sft_weight)
        loss = (per_group * inputs["weights"]).mean()
        return (loss, {"scores": scores}) if return_outputs else loss

    def eval_metrics(self, ds) -> dict[str, float]:
        right = total = top1 = groups = 0
        loss_sum = 0.0
        for batch in self.eval_batches(ds):
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            per_group, scores = rescue_losses(logits, batch, self.cfg.alpha, self.cfg.sft_weight)
            loss_sum += float((per_group * batch["weights"]).sum())
            r, t = ranking_pair_counts(scores, batch["grades"], batch["groups"])
            right, total = right + r, total + t
            for g in range(batch["weights"].numel()):
                sel = batch["groups"] == g
                top1 += int(batch["grades"][sel][scores[sel].argmax()] == batch["grades"][sel].max())
                groups += 1
        return {
            "loss": loss_sum / max(1, groups),
            "ranking_accuracy": right / max(1, total),
            "top1_accuracy": top1 / max(1, groups),
            "ordered_pairs": float(total),
            "groups": float(groups),
        }

    def before_training(self, checkpoint: str | None) -> dict[str, Any]:
        return {"metrics_before": self.evaluate() if self.eval_dataset is not None else {}}


# ----------------------------------------------------------------------------- entry point
def load_groups(shards: str, split: str, tok, cfg: RescueConfig, limit: int | None):
    rows = read_rows(shards, "ranking", split, limit, cfg.verify_shards)
    items, report, cut = tokenize_groups(rows, tok, cfg, f"ranking/{split}")
    lengths = [sum(len(s["input_ids"]) for s in g["seqs"]) for g in items]
    return ListDataset(items, lengths), report, cut


def train(config: RescueConfig) -> dict[str, Any]:
    """Train a causal LM with RESCUE on the ranking shards; returns metrics and the output folder."""
    spec, tok = start(config)

    def load(split: str, limit: int | None, held_out: bool):
        ds, report, cut = load_groups(config.shards, split, tok, config, limit)
        return ds, report if held_out else {**report.as_dict(), "candidates_cut": cut}

    data = load_data(config, "ranking", "groups", load)
    set_seed(config.seed)  # before the model: any new weights are drawn from the seeded generator
    trainer = RescueTrainer(
        model=load_causal_lm(spec),
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=GroupCollator(tok.pad_token_id, config.width_multiple(), config.max_length),
        processing_class=tok,
    )
    return trainer.run(data)
