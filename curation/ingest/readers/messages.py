"""OpenAI chat format: ``{"messages": [{"role", "content"}]}`` (content as text or parts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from curation.ingest.readers import turns
from curation.ingest.readers.base import Frame, Reader, Record, Taken, extra_meta, split_prompt
from curation.ingest.readers.registry import register


@register(priority=20)
class MessagesReader(Reader):
    name = "messages"
    kind = "sft"
    summary = "OpenAI messages: {messages: [{role, content}]} (string or list-of-parts content)"
    reads = frozenset({"messages"})
    #: turns of {role, content} strings (content as a list of parts, tool calls or a turn's other fields
    #: go row by row)
    layouts = (pa.schema([("messages", pa.list_(turns.ROLE_CONTENT))]),)

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return turns.opens_conversation(row, "messages", "role") and "chosen" not in row

    def columnar(self, frame: Frame) -> Taken:
        return turns.messages_columnar(frame)

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = turns.normalize_messages(row.get("messages"), "messages")
        split_prompt(messages, "messages")  # must end with an assistant turn after a user turn
        meta = extra_meta(row, self.reads) | turns.turn_extras(row["messages"])
        return [{"messages": messages, "meta": meta}]
