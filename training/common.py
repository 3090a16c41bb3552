"""Pieces the three trainers share: config base, length-grouped sampling, chat rendering, step logs.

The configs extend ``transformers.TrainingArguments`` (as TRL's do), so every Trainer option
(learning rate, batch size, gradient accumulation, bf16, FSDP / DeepSpeed, save/eval steps, seed,
resume) is also a flag and a YAML key, and ``accelerate launch`` / ``torchrun`` scale the same run.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, Sampler
from transformers import TrainerCallback, TrainingArguments

from curation.core.options import option

log = logging.getLogger(__name__)

#: Used when a tokenizer has no chat template (e.g. an encoder such as MiniLM).
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class CurateTrainingConfig(TrainingArguments):
    """Options shared by the curate trainers (on top of every transformers.TrainingArguments option)."""

    # Batch widths on CUDA are padded to multiples of this many tokens unless pad_to_multiple_of says
    # otherwise: at most max_length / 64 distinct shapes. On an H200 this made the SFT trainer's first
    # epoch 2.8x faster at no cost once warm (benchmarks/gpu/RESULTS.md, session 4).
    cuda_width_multiple: ClassVar[int] = 64

    shards: str = option(
        "", "Build folder with manifest.json and <consumer>/<split>-NNNNN.parquet (required)."
    )
    model: str = option("", "Model to fine-tune: a local folder or a hub id already in the local cache.")
    train_split: str = option("train", "Shard split to train on.")
    eval_split: str | None = option(
        "eval", "Shard split for held-out metrics ('' or none to skip; skipped if absent)."
    )
    max_length: int = option(512, "Maximum tokens per sequence.")
    overlong: str = option(
        "truncate",
        "What to do with samples over max_length: 'truncate' or 'drop' (both are counted and "
        "reported, never silent).",
        choices=["truncate", "drop"],
    )
    length_grouping: bool = option(
        True, "Batch samples of similar length (sorted buckets, batches shuffled) to avoid padding waste."
    )
    trust_remote_code: bool = option(False, "Allow the model's own Python code (off: safe loading).")
    allow_download: bool = option(False, "Allow fetching a hub id from the network (off: local cache only).")
    verify_shards: bool = option(
        True, "Check every shard file's sha256 against manifest.json before training."
    )
    pad_to_multiple_of: int = option(
        0,
        "Round each batch's padded width up to a multiple of N tokens (never past max_length): "
        "fewer distinct shapes, whose first steps are slow on a GPU. 0: the trainer's default on CUDA "
        "(64 for sft and rm, none for rescue), none elsewhere.",
    )
    max_train_samples: int | None = option(
        None, "Train on the first N samples of the split only (for quick runs)."
    )
    max_eval_samples: int | None = option(None, "Evaluate on the first N samples of the eval split only.")

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of < 0:
            raise ValueError(f"pad_to_multiple_of={self.pad_to_multiple_of}: must be 0 (auto) or positive")
        if not self.output_dir:
            self.output_dir = "curate_train_output"
        # our collators read shard columns the model does not take as arguments
        self.remove_unused_columns = False
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for (torch warns on every data loader)
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length}: needs at least 8 tokens")
        if self.overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong={self.overlong!r}: choose 'truncate' or 'drop'")
        if self.eval_split in ("", "none", "None"):
            self.eval_split = None

    def width_multiple(self) -> int:
        """The batch width multiple to pad to (``pad_to_multiple_of``, or the device's default)."""
        if self.pad_to_multiple_of:
            return self.pad_to_multiple_of
        return self.cuda_width_multiple if self.device.type == "cuda" else 1

    def check_required(self) -> None:
        if not self.shards:
            raise ValueError("--shards is required (a build folder with manifest.json)")
        if not self.model:
            raise ValueError("--model is required (a local model folder or a cached hub id)")
        from training.shards import read_manifest

        read_manifest(self.shards)  # fail on a bad build folder before loading any model

    def resume_checkpoint(self) -> str | None:
        """``resume_from_checkpoint``: a path, or 'last'/'true' for the newest checkpoint in output_dir."""
        value = self.resume_from_checkpoint
        if value is None or str(value).lower() in ("", "false", "none"):
            return None
        if str(value).lower() in ("last", "true", "auto"):
            last = last_complete_checkpoint(self.output_dir)
            if last is None:
                log.info("no complete checkpoint in %s: starting fresh", self.output_dir)
            return last
        return str(value)


#: Written into a checkpoint folder after transformers has saved everything in it. transformers writes
#: checkpoints file by file, so a run killed mid-save leaves a folder that only looks like a checkpoint;
#: resuming with 'last' only ever picks folders that carry this marker.
CHECKPOINT_COMPLETE = "CHECKPOINT_COMPLETE"


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder under ``output_dir`` whose save finished (has the marker)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [
        p
        for p in root.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / CHECKPOINT_COMPLETE).exists()
    ]
    skipped = [p.name for p in root.glob("checkpoint-*") if p not in done]
    if skipped:
        log.warning(
            "ignoring incomplete checkpoint folder(s) %s in %s (a run was killed while saving)",
            ", ".join(sorted(skipped)),
            root,
        )
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


class ListDataset(Dataset):
    """Pre-tokenised samples (dicts) with their lengths, for the length-grouped sampler."""

    def __init__(self, items: list[dict[str, Any]], lengths: Sequence[int]) -> None:
        self.items, self.lengths = items, list(lengths)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class SortedBucketSampler(Sampler[int]):
    """Indices in batches of similar length: sort by length, cut into batches, shuffle the batches.

    The DataLoader cuts the stream into consecutive chunks of ``batch_size`` (and accelerate shards
    them across processes), so each batch holds neighbours in length order: little padding. With
    ``weights``, each epoch first draws ``len(lengths)`` indices with replacement in proportion to them.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int = 0, weights: Sequence[float] | None = None
    ) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0
        self.weights = None if weights is None else list(weights)

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.weights is None:
            rng.shuffle(order)  # random order among equal lengths
        else:
            order = rng.choices(order, weights=self.weights, k=len(order))
        order.sort(key=lambda i: self.lengths[i])
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        # a short last batch stays last: anywhere else it would shift every later batch boundary
        tail = batches.pop() if batches and len(batches[-1]) < self.batch_size else []
        rng.shuffle(batches)
        self.epoch += 1
        return iter([i for b in batches for i in b] + tail)


def ensure_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        log.info("tokenizer has no chat template: using curate's plain <|role|> template")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def render_with_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of ``messages`` and the character spans of each assistant turn.

    Each span runs from the end of the rendered prefix with a generation prompt to the end of the
    prefix including that turn, so template tokens after the content (e.g. an end-of-turn marker)
    are supervised too, as the model must learn to stop.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if text[:end] != tokenizer.apply_chat_template(messages[: i + 1], tokenize=False):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        spans.append((start, end))
    return text, spans


class JsonlLogCallback(TrainerCallback):
    """Appends every logged dict (loss and metrics per logging step) to ``<output_dir>/log.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_save(self, args, state, control, **kwargs):
        """Mark the checkpoint transformers just finished writing as complete (see CHECKPOINT_COMPLETE)."""
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                tmp = folder / f".{CHECKPOINT_COMPLETE}.tmp"
                tmp.write_text(json.dumps({"global_step": state.global_step}))
                os.replace(tmp, folder / CHECKPOINT_COMPLETE)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            row = {"step": state.global_step, "epoch": state.epoch, **logs}
            with open(self.path, "a") as fh:
                fh.write(json.dumps(row, default=float) + "\n")
