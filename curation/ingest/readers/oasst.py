"""OASST message trees: one ranking per node whose replies carry human ranks (rank 0 = best)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import Message, Reader, Record, RowError, candidate, dense_grades, msg, text
from curation.ingest.readers.registry import register
from curation.ingest.readers.turns import ROLE_MAP


@register(priority=70)
class OASSTTreeReader(Reader):
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
