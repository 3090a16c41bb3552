"""Reading records for scoring and rendering them as model input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from curation.core.sql import check_expression

if TYPE_CHECKING:
    from curation.core.store import Store

Messages = Sequence[dict[str, str]]

_COLUMNS = {
    "pair": "id, source, prompt, chosen, rejected",
    "sft": "id, source, messages",
    "ranking": "id, source, prompt, candidates",
}
_VIEW = {"pair": "pairs", "sft": "sft", "ranking": "rankings"}


def load_records(store: Store, kind: str, where: str | None = None, limit: int | None = None) -> list[dict]:
    """Records of one kind as dicts, in id order (deterministic).

    ``where`` (the user's ``--where``) is one SQL boolean expression over the kind's view; it is checked
    and run by the read-only sandbox (curation.core.sql), which raises SQLError (a ValueError) naming it."""
    if kind not in _VIEW:
        raise ValueError(f"unknown kind {kind!r}: use pair, sft or ranking")
    q = f"SELECT {_COLUMNS[kind]} FROM {_VIEW[kind]}"
    what = "query"
    if where:
        q += f" WHERE ({check_expression(where, '--where')})"
        what = f"--where {where!r}"
    q += " ORDER BY id"
    if limit:
        q += f" LIMIT {int(limit)}"
    return store.query(q, what=what).to_pylist()


def plain_render(messages: Messages) -> str:
    """The fallback rendering for tokenizers without a chat template: one "role: content" line per turn."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def render(tokenizer: Any, messages: Messages) -> str:
    """A dialogue as one string: the tokenizer's chat template when it has one, else ``plain_render``."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False)
    return plain_render(messages)


def last_user_turn(messages: Messages) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return ""


def response_text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant")


def prompt_of_sft(messages: Messages) -> list[dict[str, str]]:
    """Messages of an SFT conversation before its final assistant turn(s)."""
    out = list(messages)
    while out and out[-1]["role"] == "assistant":
        out.pop()
    return out


def final_response_of_sft(messages: Messages) -> list[dict[str, str]]:
    return list(messages)[len(prompt_of_sft(messages)) :]
