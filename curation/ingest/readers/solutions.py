"""GSM8K example solutions: a question, its ground truth and model solutions marked correct or not.

The reference gets grade 3, correct solutions 2, wrong ones 1 (ties within).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import Reader, Record, RowError, candidate, extra_meta, msg, text
from curation.ingest.readers.registry import register

#: GSM8K-style grades (methods.md section 2): reference 3, correct 2, wrong 1.
REFERENCE_GRADE, CORRECT_GRADE, WRONG_GRADE = 3, 2, 1


@register(priority=60)
class SolutionsReader(Reader):
    name = "solutions"
    kind = "ranking"
    summary = "GSM8K-style: {question, ground_truth, <model>: {solution, is_correct}, ...}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return "question" in row and any(
            isinstance(v, Mapping) and "is_correct" in v and "solution" in v for v in row.values()
        )

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        prompt = [msg("user", text(row.get("question"), "question"))]
        cands = []
        if row.get("ground_truth") is not None:
            cands.append(
                candidate(
                    text(row["ground_truth"], "ground_truth"), REFERENCE_GRADE, True, '{"model": "reference"}'
                )
            )
        used = {"question", "ground_truth"}
        for key, value in row.items():
            if isinstance(value, Mapping) and "is_correct" in value:
                used.add(key)
                ok = value.get("is_correct")
                if not isinstance(ok, bool):
                    raise RowError(f"{key}.is_correct", f"expected true/false, got {ok!r}")
                cands.append(
                    candidate(
                        text(value.get("solution"), f"{key}.solution"),
                        CORRECT_GRADE if ok else WRONG_GRADE,
                        False,
                        f'{{"model": "{key}"}}',
                    )
                )
        if len(cands) < 2:
            raise RowError("solutions", f"a ranking needs at least 2 candidates, got {len(cands)}")
        return [{"prompt": prompt, "candidates": cands, "meta": extra_meta(row, used)}]
