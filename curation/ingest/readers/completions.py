"""Rated completions (UltraFeedback-like): a prompt and candidates with a score, rating or rank."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import (
    Reader,
    Record,
    RowError,
    candidate,
    dense_grades,
    extra_meta,
    msg,
    text,
)
from curation.ingest.readers.registry import register
from curation.ingest.readers.turns import normalize_messages

_LIST_KEYS = ("completions", "responses", "candidates")
_CONTENT_KEYS = ("response", "text", "content", "output", "completion")
_SCORE_KEYS = ("grade", "score", "rating", "overall_score", "fine-grained_score", "reward")
_PROMPT_KEYS = ("prompt", "instruction", "question")


@register(priority=50)
class CompletionsReader(Reader):
    name = "completions"
    kind = "ranking"
    summary = "Rated completions: {prompt|instruction, completions: [{response, score|rating|rank}]}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return any(
            isinstance(row.get(k), list) and row[k] and isinstance(row[k][0], Mapping) for k in _LIST_KEYS
        ) and any(k in row for k in _PROMPT_KEYS)

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        pkey = next((k for k in _PROMPT_KEYS if k in row), None)
        if pkey is None:
            raise RowError("prompt", "missing")
        prompt_raw = row[pkey]
        prompt = [msg("user", text(prompt_raw, pkey))] if not isinstance(prompt_raw, list) else None
        if prompt is None:
            prompt = normalize_messages(prompt_raw, pkey)
        lkey = next((k for k in _LIST_KEYS if isinstance(row.get(k), list)), None)
        if lkey is None:
            raise RowError(_LIST_KEYS[0], f"missing: no list of candidates ({', '.join(_LIST_KEYS)})")
        items = row[lkey]
        contents, scores, by_rank, keys = [], [], False, []
        for i, item in enumerate(items):
            where = f"{lkey}[{i}]"
            if not isinstance(item, Mapping):
                raise RowError(where, "expected an object")
            ckey = next((k for k in _CONTENT_KEYS if k in item), None)
            if ckey is None:
                raise RowError(where, f"no response text (one of {', '.join(_CONTENT_KEYS)})")
            contents.append(text(item[ckey], f"{where}.{ckey}"))
            skey = next((k for k in _SCORE_KEYS if k in item), None)
            if skey is None and "rank" in item:
                skey, by_rank = "rank", True
            if skey is None:
                raise RowError(f"{where}", "grades present: no grade/score/rating/rank")
            if keys and skey not in keys:  # a rank of 1 is the best, a score of 1 the worst: no one order
                raise RowError(
                    f"{where}.{skey}",
                    f"graded by {skey!r} while an earlier candidate is graded by {keys[0]!r}: "
                    "one ranking takes one kind of grade",
                )
            keys.append(skey)
            value = item[skey]
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise RowError(f"{where}.{skey}", f"expected a number (not NaN), got {value!r}")
            scores.append(float(value))
        if len(contents) < 2:
            raise RowError(lkey, f"a ranking needs at least 2 candidates, got {len(contents)}")
        grades = dense_grades(scores, higher_is_better=not by_rank)
        return [
            {
                "prompt": prompt,
                "candidates": [candidate(c, g) for c, g in zip(contents, grades, strict=True)],
                "meta": extra_meta(row, {pkey, lkey}),
            }
        ]
