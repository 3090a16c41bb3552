"""Alpaca: ``{instruction, input, output, system?, history?}`` (and the pair form with chosen/rejected strings)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from curation.ingest.readers.base import Message, Reader, Record, RowError, extra_meta, msg, text

_USED = {"instruction", "input", "output", "system", "history", "chosen", "rejected"}


def alpaca_prompt(row: Mapping[str, Any]) -> list[Message]:
    instruction = text(row.get("instruction"), "instruction")
    extra = row.get("input")
    user = (
        instruction if extra in (None, "") else f"{instruction}\n\n{text(extra, 'input', allow_empty=True)}"
    )
    messages: list[Message] = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
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

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = alpaca_prompt(row)
        messages.append(msg("assistant", text(row.get("output"), "output")))
        return [{"messages": messages, "meta": extra_meta(row, _USED)}]


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
