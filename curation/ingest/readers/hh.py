"""HH-RLHF transcripts: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from curation.ingest.readers.base import (
    Message,
    Reader,
    Record,
    RowError,
    extra_meta,
    pair_from_conversations,
    text,
)

_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def split_transcript(transcript: str, field: str = "transcript") -> list[Message]:
    """Turns of an HH transcript. Text before the first marker is an error unless blank.

    The content of a turn is kept verbatim except for the marker itself (one
    optional space after the colon is part of the marker). An empty final
    assistant turn is kept as empty so that validation can quarantine it.
    """
    parts = _TURN.split(transcript)
    head, rest = parts[0], parts[1:]
    if head.strip():
        raise RowError(field, "text before the first '\\n\\nHuman:' marker")
    if not rest:
        raise RowError(field, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return [{"role": _ROLE[rest[i]], "content": rest[i + 1]} for i in range(0, len(rest), 2)]


class HHReader(Reader):
    name = "hh"
    kind = "pair"
    summary = "HH-RLHF: {chosen, rejected} whole transcripts with Human:/Assistant: turns"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        c = row.get("chosen")
        return isinstance(c, str) and "\n\nHuman:" in c and isinstance(row.get("rejected"), str)

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for the common rows (see ``hh_pairs_columnar``); the rest go row by row."""
        idx = [
            i
            for i, v in enumerate(values)
            if len(v) == 2 and type(v.get("chosen")) is str and type(v.get("rejected")) is str
        ]
        if not idx:
            return None, list(range(len(values)))
        frame = pl.DataFrame(
            {
                "_i": idx,
                "chosen": [values[i]["chosen"] for i in idx],
                "rejected": [values[i]["rejected"] for i in idx],
            },
            schema={"_i": pl.Int64, "chosen": pl.String, "rejected": pl.String},
        )
        fast, slow = hh_pairs_columnar(frame)
        rest = sorted(set(range(len(values))) - set(idx) | set(slow))
        return fast, rest

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        chosen = split_transcript(text(row.get("chosen"), "chosen"), "chosen")
        rejected = split_transcript(text(row.get("rejected"), "rejected"), "rejected")
        rec = pair_from_conversations(chosen, rejected, "chosen")
        rec["meta"] = extra_meta(row, {"chosen", "rejected"})
        return [rec]


def _turn_list(col: str) -> pl.Expr:
    """Transcript -> ["<head>", "U<user text>", "A<assistant text>", ...] (markers as in ``_TURN``)."""
    return (
        pl.col(col)
        .str.replace_all(r"\n\nHuman: ?", "\x00U")
        .str.replace_all(r"\n\nAssistant: ?", "\x00A")
        .str.split("\x00")
    )


def hh_pairs_columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """``HHReader.convert`` over a frame of (_i, chosen, rejected) strings, for the rows where it is exact.

    Exact for rows with no NUL character, both transcripts starting with the
    Human marker, ending with an assistant turn after a user turn, and
    identical up to that last assistant turn (then the shared prefix is the
    prompt and the last turns are the responses, as ``pair_from_conversations``
    finds). Returns (canonical pair frame with _i, the _i of the other rows).
    """
    t = frame.select(
        "_i",
        _turn_list("chosen").alias("c"),
        _turn_list("rejected").alias("r"),
        (
            pl.col("chosen").str.contains("\x00", literal=True)
            | pl.col("rejected").str.contains("\x00", literal=True)
        ).alias("nul"),
    )
    n_c, n_r = pl.col("c").list.len(), pl.col("r").list.len()
    ok = (
        ~pl.col("nul")
        & (n_c >= 3)
        & (pl.col("c").list.first() == "")
        & pl.col("c").list.last().str.starts_with("A")
        & pl.col("r").list.last().str.starts_with("A")
        & pl.col("c").list.get(-2, null_on_oob=True).str.starts_with("U")
        & (pl.col("c").list.slice(0, n_c - 1) == pl.col("r").list.slice(0, n_r - 1))
    )
    t = t.with_columns(ok.fill_null(False).alias("ok"))
    slow = t.filter(~pl.col("ok")).get_column("_i").to_list()
    e = pl.element()
    turn = pl.struct(
        role=e.str.head(1).replace_strict({"U": "user", "A": "assistant"}, return_dtype=pl.String),
        content=e.str.slice(1),
    )

    def last(col: str) -> pl.Expr:
        return pl.concat_list(
            pl.struct(role=pl.lit("assistant"), content=pl.col(col).list.last().str.slice(1))
        )

    fast = t.filter(pl.col("ok")).select(
        "_i",
        pl.col("c").list.slice(1, n_c - 2).list.eval(turn).alias("prompt"),
        last("c").alias("chosen"),
        last("r").alias("rejected"),
        pl.lit(None, dtype=pl.Float64).alias("strength"),
        pl.lit("{}").alias("meta"),
    )
    return fast, slow
