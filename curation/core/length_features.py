"""Length and format features of a pair's two responses: the cues a length-biased judge or reward model reads.

One definition for every place that controls for length (methods.md section 5): the reward_margin
scorer's bias expert and residualisation, the reward-model trainer's length expert, and the
diagnostics. Pure functions of token counts and texts; no model, no store.

Every pair feature is *antisymmetric*: swapping chosen and rejected negates it. A bias expert that is a
linear (or odd) function of these features therefore says nothing about a pair whose two responses
look alike, and flips its verdict when the pair is flipped, as a preference must.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

#: Markdown structure that judges reward: list items, headings, code fences, table rows, bold spans.
_LIST_ITEM = re.compile(r"(?m)^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+\S")
_HEADING = re.compile(r"(?m)^[ \t]*#{1,6}[ \t]+\S")
_CODE_FENCE = re.compile(r"(?m)^[ \t]*```")
_TABLE_ROW = re.compile(r"(?m)^[ \t]*\|.*\|[ \t]*$")
_BOLD = re.compile(r"\*\*[^*\n]+\*\*")

MARKDOWN_NAMES = ("list_items", "headings", "code_blocks", "table_rows", "bold_spans")

#: Column names of ``pair_length_features``, in order.
FEATURE_NAMES = (
    "log_length_ratio",  # log1p(len_c) - log1p(len_r)
    "signed_log_length_diff",  # sign(d) * log1p(|d|), d = len_c - len_r
    "longer_sign",  # sign(len_c - len_r)
    "log_ratio_x_mean_log_length",  # log ratio times the pair's mean log length (long pairs differ more)
    *(f"{name}_diff" for name in MARKDOWN_NAMES),  # log1p(count_c) - log1p(count_r)
)


def markdown_counts(text: str) -> tuple[int, int, int, int, int]:
    """(list items, headings, code blocks, table rows, bold spans) of one response."""
    return (
        len(_LIST_ITEM.findall(text)),
        len(_HEADING.findall(text)),
        len(_CODE_FENCE.findall(text)) // 2,
        len(_TABLE_ROW.findall(text)),
        len(_BOLD.findall(text)),
    )


def markdown_matrix(texts: Sequence[str]) -> np.ndarray:
    """``markdown_counts`` of each text, shape (len(texts), 5)."""
    if not texts:
        return np.zeros((0, len(MARKDOWN_NAMES)), dtype=np.float64)
    return np.array([markdown_counts(t) for t in texts], dtype=np.float64)


def pair_length_features(
    len_chosen: Sequence[float] | np.ndarray,
    len_rejected: Sequence[float] | np.ndarray,
    markdown_chosen: np.ndarray | None = None,
    markdown_rejected: np.ndarray | None = None,
) -> np.ndarray:
    """Antisymmetric length features of each pair, shape (pairs, len(FEATURE_NAMES)).

    ``len_*`` are response lengths in tokens (any tokenizer, as long as both sides use the same);
    ``markdown_*`` are ``markdown_matrix`` of the two responses (zeros when not given).
    """
    lc = np.asarray(len_chosen, dtype=np.float64)
    lr = np.asarray(len_rejected, dtype=np.float64)
    if lc.shape != lr.shape or lc.ndim != 1:
        raise ValueError(f"len_chosen {lc.shape} and len_rejected {lr.shape} must be 1-d and equal")
    d = lc - lr
    log_ratio = np.log1p(lc) - np.log1p(lr)
    mean_log = 0.5 * (np.log1p(lc) + np.log1p(lr))
    n = len(lc)
    mc = np.zeros((n, len(MARKDOWN_NAMES))) if markdown_chosen is None else np.asarray(markdown_chosen, float)
    mr = (
        np.zeros((n, len(MARKDOWN_NAMES)))
        if markdown_rejected is None
        else np.asarray(markdown_rejected, float)
    )
    md = np.log1p(mc) - np.log1p(mr)
    return np.column_stack(
        [log_ratio, np.sign(d) * np.log1p(np.abs(d)), np.sign(d), log_ratio * mean_log, md]
    )
