"""ShareGPT: ``{"conversations": [{"from", "value"}], "system"?, "tools"?}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curation.ingest.readers import turns
from curation.ingest.readers.base import Frame, Reader, Record, Taken, extra_meta, split_prompt
from curation.ingest.readers.registry import register


@register(priority=80)
class ShareGPTReader(Reader):
    name = "sharegpt"
    kind = "sft"
    summary = (
        "ShareGPT: {conversations: [{from, value}]}; roles human, gpt, system, function_call, observation"
    )
    reads = frozenset({"conversations", "system"})
    layouts = (pa.schema([("conversations", pa.list_(turns.SHAREGPT_TURN)), ("system", pa.string())]),)

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return turns.opens_conversation(row, "conversations", "from") and "chosen" not in row

    def columnar(self, frame: Frame) -> Taken:
        """``messages_columnar`` of the turns renamed, the system prompt first as ``with_system`` puts it
        (a null one is none, as in the row path)."""
        import polars as pl

        renamed = pl.col("conversations").list.eval(pl.element().struct.rename_fields(["role", "content"]))
        frame = frame.select("_i", renamed.alias("messages"), "system")
        return turns.messages_columnar(frame, system=pl.col("system"))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = turns.normalize_messages(row.get("conversations"), "conversations", "from", "value")
        messages = turns.with_system(row.get("system"), messages)
        split_prompt(messages, "conversations")
        meta = extra_meta(row, self.reads) | turns.turn_extras(row["conversations"], "from", "value")
        return [{"messages": messages, "meta": meta}]
