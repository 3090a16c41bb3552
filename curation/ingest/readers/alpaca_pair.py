"""Alpaca preference: ``{instruction, input, chosen, rejected, system?, history?}`` with string responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.alpaca import ALPACA_FIELDS, alpaca_prompt
from curation.ingest.readers.base import Reader, Record, extra_meta, msg, text
from curation.ingest.readers.registry import register


@register(priority=40)
class AlpacaPairReader(Reader):
    name = "alpaca_pair"
    kind = "pair"
    summary = "Alpaca preference: {instruction, input, chosen, rejected} with string responses"
    reads = ALPACA_FIELDS

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
                "meta": extra_meta(row, self.reads),
            }
        ]
