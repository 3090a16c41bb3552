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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import Trainer, set_seed

from curation.core.losses import (
    IGNORE_INDEX,
    hinge_ranking_loss,
    length_normalised_scores,
    ranking_pair_counts,
)
from curation.core.models import ModelSpec, encode_untruncated, load_causal_lm, load_tokenizer
from curation.core.padding import padded_width
from training.common import (
    CurateTrainingConfig,
    JsonlLogCallback,
    ListDataset,
    SortedBucketSampler,
    ensure_chat_template,
    write_length_reports,
)
from training.shards import LengthReport, load_split, splits

log = logging.getLogger(__name__)


@dataclass
class RescueConfig(CurateTrainingConfig):
    """RESCUE options (plus every transformers.TrainingArguments option)."""

    # A batch's row count varies with its groups' candidates, so rounding widths leaves most shapes new:
    # on an H200 it did not speed up the first epoch and cost about 9 % once warm (benchmarks/gpu).
    cuda_width_multiple: ClassVar[int] = 1

    max_length: int = field(
        default=512, metadata={"help": "Maximum tokens per prompt + candidate (paper: 512)."}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate (paper: 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Scheduler (paper: cosine)."})
    per_device_train_batch_size: int = field(
        default=1, metadata={"help": "Groups (prompts with all their candidates) per device per step."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log loss every N steps."})
    alpha: float = field(default=0.1, metadata={"help": "Weight of the ranking loss (paper: 0.1)."})
    sft_weight: float = field(
        default=1.0, metadata={"help": "Weight of the SFT loss on the best candidate (0 = ranking only)."}
    )
    lambda_reference: float = field(
        default=1.0, metadata={"help": "Length-normalisation exponent, reference."}
    )
    lambda_candidate: float = field(default=0.85, metadata={"help": "Length-normalisation exponent, others."})
    max_candidates: int = field(
        default=6,
        metadata={"help": "Most candidates per group (paper: 2-6); extra ones are cut, lowest grades first."},
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
        width = padded_width(max(len(s["input_ids"]) for s in seqs), self.multiple_of, self.limit)
        n = len(seqs)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, s in enumerate(seqs):
            k = len(s["input_ids"])
            ids[i, :k] = torch.tensor(s["input_ids"])
            labels[i, s["prompt_len"] : k] = ids[i, s["prompt_len"] : k]
            mask[i, :k] = 1
        best = torch.zeros(n, dtype=torch.bool)
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


class RescueTrainer(Trainer):
    def __init__(self, *args, rescue_config: RescueConfig, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cfg = rescue_config

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        if self.cfg.length_grouping and hasattr(ds, "lengths"):
            return SortedBucketSampler(ds.lengths, self.args.per_device_train_batch_size, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        per_group, scores = rescue_losses(logits, inputs, self.cfg.alpha, self.cfg.sft_weight)
        loss = (per_group * inputs["weights"]).mean()
        return (loss, {"scores": scores}) if return_outputs else loss

    @torch.no_grad()
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            return {}
        model = self.model
        was = model.training
        model.eval()
        right = total = top1 = groups = 0
        loss_sum = 0.0
        for batch in self.get_eval_dataloader(ds):
            batch = self._prepare_inputs(batch)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            per_group, scores = rescue_losses(logits, batch, self.cfg.alpha, self.cfg.sft_weight)
            loss_sum += float((per_group * batch["weights"]).sum())
            r, t = ranking_pair_counts(scores, batch["grades"], batch["groups"])
            right, total = right + r, total + t
            for g in range(batch["weights"].numel()):
                sel = batch["groups"] == g
                top1 += int(batch["grades"][sel][scores[sel].argmax()] == batch["grades"][sel].max())
                groups += 1
        model.train(was)
        metrics = {
            f"{metric_key_prefix}_loss": loss_sum / max(1, groups),
            f"{metric_key_prefix}_ranking_accuracy": right / max(1, total),
            f"{metric_key_prefix}_top1_accuracy": top1 / max(1, groups),
            f"{metric_key_prefix}_ordered_pairs": float(total),
            f"{metric_key_prefix}_groups": float(groups),
        }
        self.log(metrics)
        return metrics


# ----------------------------------------------------------------------------- entry point
def load_groups(shards: str, split: str, tok, cfg: RescueConfig, limit: int | None):
    table = load_split(shards, "ranking", split, verify=cfg.verify_shards)
    if limit is not None:
        table = table.slice(0, limit)
    items, report, cut = tokenize_groups(table.to_pylist(), tok, cfg, f"ranking/{split}")
    lengths = [sum(len(s["input_ids"]) for s in g["seqs"]) for g in items]
    return ListDataset(items, lengths), report, cut


def train(config: RescueConfig) -> dict[str, Any]:
    """Train a causal LM with RESCUE on the ranking shards; returns metrics and the output folder."""
    config.check_required()
    spec = ModelSpec(config.model, config.trust_remote_code, config.allow_download)
    tok = load_tokenizer(spec)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    train_ds, train_report, cut = load_groups(
        config.shards, config.train_split, tok, config, config.max_train_samples
    )
    if len(train_ds) == 0:
        raise ValueError(f"{config.shards}: no ranking/{config.train_split} groups left to train on")
    eval_ds, eval_report = None, None
    if config.eval_split and config.eval_split in splits(config.shards, "ranking"):
        eval_ds, eval_report, _ = load_groups(
            config.shards, config.eval_split, tok, config, config.max_eval_samples
        )
    set_seed(config.seed)  # before the model: any new weights are drawn from the seeded generator
    trainer = RescueTrainer(
        model=load_causal_lm(spec),
        args=config,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=GroupCollator(tok.pad_token_id, config.width_multiple(), config.max_length),
        processing_class=tok,
        callbacks=[JsonlLogCallback(Path(config.output_dir) / "log.jsonl")],
        rescue_config=config,
    )
    before = trainer.evaluate() if eval_ds is not None else {}
    write_length_reports(
        config, train=train_report.as_dict(), eval=eval_report.as_dict() if eval_report else None
    )
    t0 = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=config.resume_checkpoint())
    seconds = time.perf_counter() - t0
    trainer.save_model(config.output_dir)
    metrics = trainer.evaluate() if eval_ds is not None else {}
    return {
        "output_dir": config.output_dir,
        "train_loss": out.training_loss,
        "global_step": out.global_step,
        "train_seconds": seconds,
        "train_length_report": {**train_report.as_dict(), "candidates_cut": cut},
        "eval_length_report": eval_report.as_dict() if eval_report else None,
        "metrics_before": before,
        "metrics": metrics,
        "log_history": trainer.state.log_history,
    }
