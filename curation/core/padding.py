"""Padding token sequences into batches: shared by the scoring runner and the trainers' collators."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def padded_width(width: int, multiple_of: int = 1, limit: int | None = None) -> int:
    """A batch's width rounded up to a multiple of ``multiple_of``, unless that would pass ``limit``.

    Fewer distinct batch shapes: on a GPU the first step at each new shape is slow (see
    benchmarks/gpu/RESULTS.md), and tensor cores like multiples of 8. ``limit`` is the model's window.
    """
    rounded = -(-width // multiple_of) * multiple_of
    return rounded if limit is None or rounded <= limit else width


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    multiple_of: int = 1,
    limit: int | None = None,
    side: str = "right",
):
    """input_ids and attention_mask tensors, padded (on ``side``) to the longest sequence of the batch.

    The width is rounded up to ``multiple_of`` (8 on a GPU: tensor-core shapes, and fewer distinct
    shapes to warm up) unless that would pass ``limit`` (the model's window).
    """
    import torch

    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = padded_width(int(lengths.max()), multiple_of, limit)
    positions = np.arange(width)
    mask = positions < lengths[:, None] if side == "right" else positions >= (width - lengths)[:, None]
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))
