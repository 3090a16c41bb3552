"""Alpaca: ``{instruction, input, output, system?, history?}`` (``alpaca_prompt``: the pair form's too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curation.ingest.readers.base import (
    Frame,
    Message,
    Reader,
    Record,
    RowError,
    Taken,
    blank_text,
    extra_meta,
    msg,
    optional_text,
    text,
)
from curation.ingest.readers.registry import register

ALPACA_FIELDS = frozenset({"instruction", "input", "output", "system", "history", "chosen", "rejected"})


def alpaca_prompt(row: Mapping[str, Any]) -> list[Message]:
    instruction = text(row.get("instruction"), "instruction")
    extra = row.get("input")
    user = (
        instruction if extra in (None, "") else f"{instruction}\n\n{text(extra, 'input', allow_empty=True)}"
    )
    messages: list[Message] = []
    system = optional_text(row.get("system"), "system")
    if system is not None:
        messages.append(msg("system", system))
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", f"expected a list of [user, assistant] pairs, got {type(history).__name__}")
    for i, turn in enumerate(history):
        if not (isinstance(turn, list | tuple) and len(turn) == 2):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
        messages += [
            msg("user", text(turn[0], f"history[{i}][0]")),
            msg("assistant", text(turn[1], f"history[{i}][1]")),
        ]
    messages.append(msg("user", user))
    return messages


@register(priority=10)
class AlpacaReader(Reader):
    name = "alpaca"
    kind = "sft"
    summary = "Alpaca: {instruction, input, output, system?, history?}"
    reads = ALPACA_FIELDS
    #: a system prompt or a history goes row by row
    layouts = (pa.schema([(f, pa.string()) for f in ("instruction", "input", "output")]),)

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return "instruction" in row and "output" in row and not {"output_1", "output_2"} & row.keys()

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = alpaca_prompt(row)
        messages.append(msg("assistant", text(row.get("output"), "output")))
        return [{"messages": messages, "meta": extra_meta(row, self.reads)}]

    def columnar(self, frame: Frame) -> Taken:
        """Exact where instruction and output are not blank (null, or empty after ``str.strip()``: a
        RowError there); a null input is no input, as in a row without one."""
        import polars as pl

        ok = ~pl.any_horizontal(*[blank_text(pl.col(f)) for f in ("instruction", "output")])
        instruction, extra = pl.col("instruction"), pl.col("input")
        user = (
            pl.when(extra.is_null() | (extra == ""))
            .then(instruction)
            .otherwise(pl.concat_str(instruction, pl.lit("\n\n"), extra))
        )
        fast = frame.filter(ok).select(
            "_i",
            pl.concat_list(
                pl.struct(role=pl.lit("user"), content=user),
                pl.struct(role=pl.lit("assistant"), content=pl.col("output")),
            ).alias("messages"),
        )
        return fast, frame.filter(~ok).get_column("_i").to_list()
