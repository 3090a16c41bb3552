"""HH-RLHF transcripts: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``."""

from __future__ import annotations

import re
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
    extra_meta,
    pair_from_conversations,
    text,
)
from curation.ingest.readers.registry import register

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


@register(priority=110)
class HHReader(Reader):
    name = "hh"
    kind = "pair"
    summary = "HH-RLHF: {chosen, rejected} whole transcripts with Human:/Assistant: turns"
    reads = frozenset({"chosen", "rejected"})
    layouts = (pa.schema([(f, pa.string()) for f in ("chosen", "rejected")]),)

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        c = row.get("chosen")
        return isinstance(c, str) and "\n\nHuman:" in c and isinstance(row.get("rejected"), str)

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        chosen = split_transcript(text(row.get("chosen"), "chosen"), "chosen")
        rejected = split_transcript(text(row.get("rejected"), "rejected"), "rejected")
        rec = pair_from_conversations(chosen, rejected, "chosen")
        rec["meta"] = extra_meta(row, self.reads)
        return [rec]

    def columnar(self, frame: Frame) -> Taken:
        return hh_pairs_columnar(frame)


#: Turn markers with and without the optional space (as ``_TURN`` consumes it) and the letter that
#: replaces each.
_MARKERS = {"\n\nHuman: ": "U", "\n\nHuman:": "u", "\n\nAssistant: ": "A", "\n\nAssistant:": "a"}
_ROLE_OF = {"U": "user", "u": "user", "A": "assistant", "a": "assistant"}
_ASSISTANT = b"\n\nAssistant:"


def hh_pairs_columnar(frame: Frame) -> Taken:
    """``HHReader.convert`` over a frame of (_i, chosen, rejected) strings, for the rows where it is exact.

    Exact for rows with two transcripts, no NUL character in the chosen one, which starts with the Human
    marker and ends with an assistant turn after a user turn, and a rejected transcript with the same bytes
    up to that last assistant marker and then one assistant turn (so the shared prefix is the prompt and the
    last turns are the responses, as ``pair_from_conversations`` finds). Returns (canonical pair frame with
    _i, the _i of the other rows).
    """
    import polars as pl

    # the chosen transcript split at its turn markers: a first part (text before the first marker), then
    # each turn as its marker's letter (U/u/A/a: user or assistant, with or without the space) and content
    marked = pl.col("chosen").str.replace_many(
        list(_MARKERS),
        ["\x00" + letter for letter in _MARKERS.values()],
        leftmost=True,  # the marker with its space wins where both match
    )
    t = frame.select(
        "_i",
        marked.str.split("\x00").alias("c"),
        pl.col("chosen").cast(pl.Binary).alias("cb"),
        pl.col("rejected").cast(pl.Binary).alias("rb"),
        pl.col("chosen").str.contains("\x00", literal=True).alias("nul"),
    )
    n_c = pl.col("c").list.len()
    last_c = pl.col("c").list.last()
    letter = last_c.str.head(1)
    # bytes of the chosen transcript before its last marker (an assistant one, with or without the space);
    # the rejected transcript must have the same ones, and after them its own assistant marker and reply
    marker = pl.when(letter == "A").then(len(_ASSISTANT) + 1).otherwise(len(_ASSISTANT))  # with its space?
    prefix = pl.col("cb").bin.size() - (last_c.str.len_bytes() - 1) - marker
    t = t.with_columns(prefix.alias("n"))
    t = t.with_columns(pl.col("rb").bin.slice(pl.col("n")).alias("rest"))
    rest, reply = pl.col("rest"), pl.col("rest").bin.slice(len(_ASSISTANT))
    ok = (
        ~pl.col("nul")
        & (n_c >= 3)
        & (pl.col("c").list.first() == "")
        & letter.is_in(["A", "a"])
        & pl.col("c").list.get(-2, null_on_oob=True).str.head(1).is_in(["U", "u"])
        & pl.col("rb").bin.starts_with(pl.col("cb").bin.head(pl.col("n")))
        & rest.bin.starts_with(_ASSISTANT)
        & ~reply.bin.contains(b"\n\nHuman:")
        & ~reply.bin.contains(_ASSISTANT)
    )
    t = t.with_columns(ok.fill_null(False).alias("ok"))
    slow = t.filter(~pl.col("ok")).get_column("_i").to_list()
    e = pl.element()
    turn = pl.struct(
        role=e.str.head(1).replace_strict(_ROLE_OF, return_dtype=pl.String),
        content=e.str.slice(1),
    )
    # cut at an ASCII marker, so the bytes are UTF-8 as the transcript was
    rejected = pl.when(reply.bin.head(1) == b" ").then(reply.bin.slice(1)).otherwise(reply).cast(pl.String)

    def single(content: pl.Expr) -> pl.Expr:
        return pl.concat_list(pl.struct(role=pl.lit("assistant"), content=content))

    fast = t.filter(pl.col("ok")).select(
        "_i",
        pl.col("c").list.slice(1, n_c - 2).list.eval(turn).alias("prompt"),
        single(last_c.str.slice(1)).alias("chosen"),
        single(rejected).alias("rejected"),
        pl.lit(None, dtype=pl.Float64).alias("strength"),
    )
    return fast, slow
