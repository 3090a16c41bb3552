"""ShareGPT preference: ``{conversations: [{from, value}], chosen: {from, value}, rejected, system?}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curation.ingest.readers import turns
from curation.ingest.readers.base import Frame, Reader, Record, RowError, Taken, blank_text, extra_meta
from curation.ingest.readers.registry import register


@register(priority=90)
class ShareGPTPairReader(Reader):
    name = "sharegpt_pair"
    kind = "pair"
    summary = "ShareGPT pairs: {conversations, chosen: {from, value}, rejected: {from, value}}"
    reads = frozenset({"conversations", "system", "chosen", "rejected"})
    #: one {from, value} turn per response (responses given as lists of turns go row by row)
    layouts = (
        pa.schema(
            [
                ("conversations", pa.list_(turns.SHAREGPT_TURN)),
                ("chosen", turns.SHAREGPT_TURN),
                ("rejected", turns.SHAREGPT_TURN),
                ("system", pa.string()),
            ]
        ),
    )

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return isinstance(row.get("conversations"), list) and isinstance(row.get("chosen"), Mapping | list)

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        prompt = turns.with_system(
            row.get("system"),
            turns.normalize_messages(row.get("conversations"), "conversations", "from", "value"),
        )
        if prompt[-1]["role"] == "assistant":
            raise RowError("conversations", "prompt ends with an assistant turn")
        sides = {}
        for side in ("chosen", "rejected"):
            value = row.get(side)
            given = value if isinstance(value, list) else [value] if value is not None else None
            sides[side] = turns.normalize_messages(given, side, "from", "value")
            if any(m["role"] != "assistant" for m in sides[side]):
                raise RowError(side, "response turns must come from the assistant (gpt)")
        return [
            {
                "prompt": prompt,
                "chosen": sides["chosen"],
                "rejected": sides["rejected"],
                "strength": None,
                "meta": extra_meta(row, self.reads),
            }
        ]

    def columnar(self, frame: Frame) -> Taken:
        """Exact for conversations that ``normalize_messages`` takes (``turns_ok``), the system prompt put
        first as ``with_system`` does, a prompt that does not end with an assistant turn, and responses
        from a role that maps to the assistant with a text that is not blank (else a RowError there)."""
        import polars as pl

        names, sides = ["role", "content"], ("chosen", "rejected")
        frame = frame.select(
            "_i",
            pl.col("conversations").list.eval(pl.element().struct.rename_fields(names)).alias("prompt"),
            *[pl.col(side).struct.rename_fields(names) for side in sides],
            "system",
        )
        frame = turns.map_roles(frame, lists=["prompt"], turns=sides)
        ok = turns.turns_ok("prompt")
        for side in sides:
            turn = pl.col(side).struct
            ok = (
                ok & (turn.field("role") == "assistant").fill_null(False) & ~blank_text(turn.field("content"))
            )
        ok = ok & ~turns.system_clash("prompt", pl.col("system"))
        frame = frame.with_columns(ok.alias("_ok")).with_columns(
            turns.system_first("prompt", pl.col("system"))
        )
        ok = pl.col("_ok") & (
            pl.col("prompt").list.eval(pl.element().struct.field("role")).list.last() != "assistant"
        )
        fast = frame.filter(ok).select(
            "_i",
            "prompt",
            *[pl.concat_list(side).alias(side) for side in sides],
            pl.lit(None, dtype=pl.Float64).alias("strength"),
        )
        return fast, frame.filter(~ok).get_column("_i").to_list()
