"""Multi-completion rankings: OASST message trees, GSM8K-style solutions with correctness, rated completions.

A ranking keeps every candidate with an integer grade (higher is better);
equal grades are ties and stay ties. Float ratings become dense integer ranks
that keep their order and their ties.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import Message, Reader, Record, RowError, extra_meta, msg, text
from curation.ingest.readers.chat import ROLE_MAP

#: GSM8K-style grades (methods.md section 2): reference 3, correct 2, wrong 1.
REFERENCE_GRADE, CORRECT_GRADE, WRONG_GRADE = 3, 2, 1


def dense_grades(scores: list[float], higher_is_better: bool = True) -> list[int]:
    """Integer grades from scores: equal scores share a grade, order is preserved, best is highest."""
    levels = sorted(set(scores), reverse=not higher_is_better)
    index = {s: i for i, s in enumerate(levels)}
    return [index[s] for s in scores]


def candidate(content: str, grade: int, is_reference: bool = False, meta: str = "{}") -> dict[str, Any]:
    return {"content": content, "grade": int(grade), "is_reference": is_reference, "meta": meta}


class OASSTTreeReader(Reader):
    """One ranking per tree node whose replies carry human ranks (rank 0 = best)."""

    name = "oasst"
    kind = "ranking"
    summary = "OASST message trees: {prompt: {text, role, replies: [{text, role, rank, replies}]}}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        p = row.get("prompt")
        return isinstance(p, Mapping) and "replies" in p and "text" in p

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        root = row.get("prompt")
        if not isinstance(root, Mapping):
            raise RowError("prompt", "expected a message-tree object")
        out: list[Record] = []
        self._walk(root, [], "prompt", row.get("message_tree_id"), out)
        if not out:
            raise RowError("prompt.replies", "no node with two or more ranked replies")
        return out

    def _walk(
        self, node: Mapping[str, Any], path: list[Message], where: str, tree_id: Any, out: list[Record]
    ) -> None:
        role = ROLE_MAP.get(str(node.get("role", "")).lower())
        if role is None:
            raise RowError(f"{where}.role", f"unknown role {node.get('role')!r}")
        path = [*path, msg(role, text(node.get("text"), f"{where}.text"))]
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise RowError(f"{where}.replies", "expected a list")
        live = [r for r in replies if isinstance(r, Mapping) and not r.get("deleted")]
        ranked = [r for r in live if isinstance(r.get("rank"), int) and not isinstance(r.get("rank"), bool)]
        if role == "user" and len(ranked) >= 2:
            grades = dense_grades([float(r["rank"]) for r in ranked], higher_is_better=False)
            cands = [
                candidate(
                    text(r.get("text"), f"{where}.replies.text"),
                    g,
                    False,
                    f'{{"message_id": "{r.get("message_id", "")}", "rank": {r["rank"]}}}',
                )
                for r, g in zip(ranked, grades, strict=True)
            ]
            out.append(
                {
                    "prompt": path,
                    "candidates": cands,
                    "meta": {"message_tree_id": tree_id, "node_id": node.get("message_id")},
                }
            )
        for i, r in enumerate(live):
            self._walk(r, path, f"{where}.replies[{i}]", tree_id, out)


class SolutionsReader(Reader):
    """GSM8K example solutions: question, ground_truth and model entries {is_correct, solution}.

    The reference gets grade 3, correct solutions 2, wrong ones 1 (ties within).
    """

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


_LIST_KEYS = ("completions", "responses", "candidates")
_CONTENT_KEYS = ("response", "text", "content", "output", "completion")
_SCORE_KEYS = ("grade", "score", "rating", "overall_score", "fine-grained_score", "reward")
_PROMPT_KEYS = ("prompt", "instruction", "question")


class CompletionsReader(Reader):
    """Rated completions (UltraFeedback-like): {prompt, completions: [{response, score|rank}]}."""

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
            from curation.ingest.readers.chat import normalize_messages

            prompt = normalize_messages(prompt_raw, pkey)
        lkey = next((k for k in _LIST_KEYS if isinstance(row.get(k), list)), None)
        if lkey is None:
            raise RowError(_LIST_KEYS[0], f"missing: no list of candidates ({', '.join(_LIST_KEYS)})")
        items = row[lkey]
        contents, scores, by_rank = [], [], False
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
