"""Alpaca: ``{instruction, input, output, system?, history?}`` (and the pair form with chosen/rejected strings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from curation.ingest.columnar import blank_text, indexed, string_rows_columnar, string_schema
from curation.ingest.readers.base import (
    Message,
    Reader,
    Record,
    RowError,
    extra_meta,
    msg,
    optional_text,
    text,
)

_USED = {"instruction", "input", "output", "system", "history", "chosen", "rejected"}


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


class AlpacaReader(Reader):
    name = "alpaca"
    kind = "sft"
    summary = "Alpaca: {instruction, input, output, system?, history?}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return "instruction" in row and "output" in row and not {"output_1", "output_2"} & row.keys()

    #: The fields of the columnar paths (Arrow batches of JSONL and Parquet, and the line path).
    arrow_fields = ("instruction", "input", "output")
    arrow_schema = string_schema(arrow_fields)
    reads = frozenset(_USED)

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for rows of exactly {instruction, input, output} strings."""
        return string_rows_columnar(values, self.arrow_fields, alpaca_columnar)

    def convert_arrow(self, table: pa.Table) -> tuple[pl.DataFrame | None, list[int]]:
        """``convert_columns`` for rows parsed by Arrow as {instruction, input, output: string} (a missing
        or null field is null; rows with a system prompt, a history or other fields, which Arrow refuses
        for the whole batch, go to ``convert``)."""
        return alpaca_columnar(indexed(table))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = alpaca_prompt(row)
        messages.append(msg("assistant", text(row.get("output"), "output")))
        return [{"messages": messages, "meta": extra_meta(row, self.reads)}]


def alpaca_columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """``AlpacaReader.convert`` over a frame of (_i, instruction, input, output) strings, for the rows where
    it is exact: instruction and output present and not empty after ``str.strip()`` (else a RowError
    there, whose reason the row path keeps); a null input is no input, as in a row without one.
    Returns (canonical sft frame with _i, the _i of the others)."""
    ok = ~pl.any_horizontal(*[blank_text(pl.col(f)) for f in ("instruction", "output")])
    slow = frame.filter(~ok).get_column("_i").to_list()
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
        pl.lit("{}").alias("meta"),
    )
    return fast, slow


class AlpacaPairReader(Reader):
    name = "alpaca_pair"
    kind = "pair"
    summary = "Alpaca preference: {instruction, input, chosen, rejected} with string responses"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return (
            "instruction" in row
            and isinstance(row.get("chosen"), str)
            and isinstance(row.get("rejected"), str)
        )

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        return [
            {
                "prompt": alpaca_prompt(row),
                "chosen": [msg("assistant", text(row.get("chosen"), "chosen"))],
                "rejected": [msg("assistant", text(row.get("rejected"), "rejected"))],
                "strength": None,
                "meta": extra_meta(row, _USED),
            }
        ]
