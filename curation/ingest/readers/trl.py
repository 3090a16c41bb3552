"""TRL preference: ``prompt``/``chosen``/``rejected`` as strings or messages (explicit or implicit prompt)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curation.ingest.readers.base import (
    Frame,
    Reader,
    Record,
    RowError,
    Taken,
    blank_text,
    extra_meta,
    msg,
    pair_from_conversations,
    text,
)
from curation.ingest.readers.registry import register
from curation.ingest.readers.turns import ROLE_CONTENT, map_roles, normalize_messages, turns_ok


@register(priority=30)
class TRLPreferenceReader(Reader):
    """With a prompt, message-list responses that begin with that prompt (whole conversations, as in
    HuggingFaceH4/ultrafeedback_binarized) are the turns after it."""

    name = "trl"
    kind = "pair"
    summary = "TRL preference: {prompt?, chosen, rejected} as strings or message lists"
    reads = frozenset({"prompt", "chosen", "rejected", "messages"})
    #: three strings; or a prompt string and {role, content} message lists (the layout of
    #: HuggingFaceH4/ultrafeedback_binarized, whose ``messages`` repeats ``chosen`` and is ignored)
    layouts = (
        pa.schema([(f, pa.string()) for f in ("prompt", "chosen", "rejected")]),
        pa.schema(
            [
                ("prompt", pa.string()),
                *[(f, pa.list_(ROLE_CONTENT)) for f in ("chosen", "rejected", "messages")],
            ]
        ),
    )

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        c, r = row.get("chosen"), row.get("rejected")
        if isinstance(c, str) and isinstance(r, str):
            return "prompt" in row or "instruction" not in row
        return isinstance(c, list) and isinstance(r, list)

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        meta = extra_meta(row, self.reads)
        prompt_raw = row.get("prompt")
        if prompt_raw is None:  # implicit prompt: two whole conversations
            chosen = normalize_messages(row.get("chosen"), "chosen")
            rejected = normalize_messages(row.get("rejected"), "rejected")
            rec = pair_from_conversations(chosen, rejected, "chosen")
            rec["meta"] = meta
            return [rec]
        if isinstance(prompt_raw, str):
            prompt = [msg("user", text(prompt_raw, "prompt"))]
        else:
            prompt = normalize_messages(prompt_raw, "prompt")
        sides = {}
        for side in ("chosen", "rejected"):
            value = row.get(side)
            sides[side] = (
                [msg("assistant", text(value, side))]
                if isinstance(value, str)
                else normalize_messages(value, side)
            )
        n = len(prompt)
        if all(turns[:n] == prompt for turns in sides.values()):
            # whole conversations that repeat the prompt (HuggingFaceH4/ultrafeedback_binarized): the
            # responses are what follows it
            for side, turns in sides.items():
                if len(turns) == n:
                    raise RowError(side, "no response after the prompt it repeats")
                sides[side] = turns[n:]
        return [
            {
                "prompt": prompt,
                "chosen": sides["chosen"],
                "rejected": sides["rejected"],
                "strength": None,
                "meta": meta,
            }
        ]

    def columnar(self, frame: Frame) -> Taken:
        """Exact where no text is blank (null, or empty after ``str.strip()``) and, for message lists, the
        responses are what ``normalize_messages`` takes (``turns_ok``) and, where both begin with the
        prompt's user turn, hold a turn after it (else a RowError there). Such responses become the
        turns after the prompt; string responses become one assistant turn."""
        import polars as pl

        sides = ("chosen", "rejected")
        listed = isinstance(frame.schema["chosen"], pl.List)

        def turn(role: str, content: pl.Expr) -> pl.Expr:
            return pl.concat_list(pl.struct(role=pl.lit(role), content=content))

        if not listed:
            ok = ~pl.any_horizontal(*[blank_text(pl.col(f)) for f in ("prompt", *sides)])
            responses = [turn("assistant", pl.col(side)).alias(side) for side in sides]
        else:
            frame = map_roles(frame, lists=list(sides))

            def repeats_prompt(side: str) -> pl.Expr:
                first = pl.col(side).list.first().struct
                return (first.field("role") == "user") & (first.field("content") == pl.col("prompt"))

            repeated = (repeats_prompt("chosen") & repeats_prompt("rejected")).fill_null(False)
            ok = ~blank_text(pl.col("prompt")) & turns_ok("chosen") & turns_ok("rejected")
            ok = ok & ~(repeated & pl.min_horizontal(*[pl.col(side).list.len() for side in sides]).eq(1))
            responses = [
                pl.when(repeated).then(pl.col(side).list.slice(1)).otherwise(pl.col(side)).alias(side)
                for side in sides
            ]
        frame = frame.with_columns(ok.alias("_ok"))
        fast = frame.filter("_ok").select(
            "_i",
            turn("user", pl.col("prompt")).alias("prompt"),
            *responses,
            pl.lit(None, dtype=pl.Float64).alias("strength"),
        )
        return fast, frame.filter(~pl.col("_ok")).get_column("_i").to_list()
