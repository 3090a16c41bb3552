"""HH-RLHF transcripts: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        chosen = split_transcript(text(row.get("chosen"), "chosen"), "chosen")
        rejected = split_transcript(text(row.get("rejected"), "rejected"), "rejected")
        rec = pair_from_conversations(chosen, rejected, "chosen")
        rec["meta"] = extra_meta(row, {"chosen", "rejected"})
        return [rec]
