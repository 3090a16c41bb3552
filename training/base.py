"""The trainers' shared base, as TRL's: ``ShardTrainer`` (a ``transformers.Trainer`` whose ``args`` is the
method's config) with the length-grouped, optionally weighted train sampler, the step log, evaluation
plumbing and ``run`` (resume, train, save, evaluate, the result dict); ``load_data`` for the splits. A
method adds ``compute_loss``, ``eval_metrics`` and, if needed, ``before_training``, ``save_final`` and
``run_summary``: ``SFTTrainer(model=..., args=config, train_dataset=data.train, ...).run(data)``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import Trainer

from curation.core.models import ModelSpec, load_tokenizer
from training.common import CurateTrainingConfig, JsonlLogCallback, ListDataset, SortedBucketSampler
from training.shards import LengthReport, splits


def load_padded_tokenizer(spec: ModelSpec):
    """The model's tokenizer, with a pad token (its eos or unk token) when it has none."""
    tok = load_tokenizer(spec)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def start(config: CurateTrainingConfig) -> tuple[ModelSpec, Any]:
    """Check the required options and the build folder; the model's spec and its padded tokenizer."""
    config.check_required()
    spec = ModelSpec(config.model, config.trust_remote_code, config.allow_download)
    return spec, load_padded_tokenizer(spec)


@dataclass
class ShardData:
    """A run's train split and (when the manifest lists it) eval split, with their length reports."""

    train: ListDataset
    train_report: dict[str, Any]
    eval: ListDataset | None = None
    eval_report: dict[str, Any] | None = None


#: ``load(split, limit, held_out)`` -> the split's dataset and its length report.
SplitLoader = Callable[[str, int | None, bool], tuple[ListDataset, LengthReport | dict[str, Any]]]


def load_data(config: CurateTrainingConfig, consumer: str, noun: str, load: SplitLoader) -> ShardData:
    """The train split (refused when nothing is left of it) and the eval split if the build has one."""

    def as_dict(report: LengthReport | dict[str, Any]) -> dict[str, Any]:
        return report if isinstance(report, dict) else report.as_dict()

    train, train_report = load(config.train_split, config.max_train_samples, False)
    if len(train) == 0:
        raise ValueError(f"{config.shards}: no {consumer}/{config.train_split} {noun} left to train on")
    data = ShardData(train, as_dict(train_report))
    if config.eval_split and config.eval_split in splits(config.shards, consumer):
        data.eval, eval_report = load(config.eval_split, config.max_eval_samples, True)
        data.eval_report = as_dict(eval_report)
    return data


class ShardTrainer(Trainer):
    """``transformers.Trainer`` on curated shards; ``args`` is the method's config (``self.cfg``)."""

    #: result key of ``units_trained`` (e.g. "samples_trained"); None: not reported.
    trained_key: ClassVar[str | None] = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(c, JsonlLogCallback) for c in self.callback_handler.callbacks):
            self.add_callback(JsonlLogCallback(Path(self.args.output_dir) / "log.jsonl"))
        self.units_trained = 0  # samples, pairs or groups the training steps saw, on this process

    @property
    def cfg(self) -> CurateTrainingConfig:
        return self.args

    # ------------------------------------------------------------------------- sampling
    def train_sampler_weights(self) -> list[float] | None:
        """Per train sample draw weights (drawn with replacement each epoch), or None: each sample once."""
        return None

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        draw = self.train_sampler_weights() if ds is self.train_dataset else None
        if self.cfg.length_grouping and hasattr(ds, "lengths"):
            return SortedBucketSampler(
                ds.lengths, self.args.per_device_train_batch_size, self.args.seed, weights=draw
            )
        if draw is not None:
            gen = torch.Generator().manual_seed(self.args.seed)
            return torch.utils.data.WeightedRandomSampler(draw, len(draw), replacement=True, generator=gen)
        return super()._get_train_sampler(train_dataset)

    def count_trained(self, model, n: int) -> None:
        """Count ``n`` units towards ``units_trained`` when ``model`` is training."""
        if model.training:
            self.units_trained += n

    # ------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        ds = eval_dataset if eval_dataset is not None else self.eval_dataset
        if ds is None:
            return {}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.eval_metrics(ds).items()}
        self.log(metrics)
        return metrics

    def eval_metrics(self, ds) -> dict[str, float]:
        """The method's held-out metrics on ``ds`` (unprefixed names)."""
        raise NotImplementedError

    def eval_batches(self, ds) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``ds`` on the device, with the model in eval mode (restored afterwards)."""
        was = self.model.training
        self.model.eval()
        try:
            for batch in self.get_eval_dataloader(ds):
                yield self._prepare_inputs(batch)
        finally:
            self.model.train(was)

    # ------------------------------------------------------------------------- the run
    def before_training(self, checkpoint: str | None) -> dict[str, Any]:
        """Called once before training (``checkpoint``: the one resumed from); extra result entries."""
        return {}

    def save_final(self) -> None:
        """Save the trained model to ``output_dir``."""
        self.save_model(self.args.output_dir)

    def run_summary(self, trained: int, seconds: float) -> dict[str, Any]:
        """Method-specific result entries (``trained``: units trained by all processes in this run)."""
        return {self.trained_key: trained} if self.trained_key else {}

    def run(self, data: ShardData) -> dict[str, Any]:
        """Train (resuming from ``resume_from_checkpoint``), save, evaluate; the run's result."""
        checkpoint = self.cfg.resume_checkpoint()
        extra = self.before_training(checkpoint)
        if self.args.should_save:  # what each split truncated or dropped for length
            path = Path(self.args.output_dir) / "length_report.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            reports = {"train": data.train_report, "eval": data.eval_report}
            path.write_text(json.dumps({k: v for k, v in reports.items() if v is not None}, indent=2))
        trained_before = self.units_trained
        t0 = time.perf_counter()
        out = self.train(resume_from_checkpoint=checkpoint)
        seconds = time.perf_counter() - t0
        self.save_final()
        metrics = self.evaluate() if self.eval_dataset is not None else {}
        delta = torch.tensor(self.units_trained - trained_before, device=self.args.device)
        trained = int(self.accelerator.reduce(delta, "sum"))  # all processes together
        return {
            "output_dir": self.args.output_dir,
            "train_loss": out.training_loss,
            "global_step": out.global_step,
            "train_seconds": seconds,
            **self.run_summary(trained, seconds),
            "train_length_report": data.train_report,
            "eval_length_report": data.eval_report,
            **extra,
            "metrics": metrics,
            "log_history": self.state.log_history,
        }
