"""Conversations: role names, turn lists to canonical messages, and their column-at-a-time forms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from curation.ingest.readers.base import Frame, Message, RowError, Taken, blank_text, msg, optional_text, text

if TYPE_CHECKING:
    import polars as pl

#: Every role name seen in the wild, mapped to a canonical role.
ROLE_MAP = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "tool_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}


#: Longest conversation accepted; longer ones are quarantined before any per-turn work.
MAX_TURNS = 10_000

#: An OpenAI-style turn as the Arrow paths parse it.
ROLE_CONTENT = pa.struct([("role", pa.string()), ("content", pa.string())])
#: A ShareGPT turn as the Arrow paths parse it.
SHAREGPT_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])


def opens_conversation(row: Mapping[str, Any], field: str, role_key: str) -> bool:
    """``sniff`` of the conversation formats: ``field`` is a list of turns whose first has ``role_key``."""
    turns = row.get(field)
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], Mapping) and role_key in turns[0]


def content_text(content: Any, field: str) -> str:
    """String content, or the text parts of an OpenAI list-of-parts content joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping):
                kind = part.get("type", "text")
                if kind != "text":
                    raise RowError(f"{field}[{j}].type", f"unsupported content part {kind!r} (only text)")
                value = part.get("text", part.get("value"))
                parts.append(text(value, f"{field}[{j}].text", allow_empty=True))
            else:
                raise RowError(f"{field}[{j}]", f"expected a content part, got {type(part).__name__}")
        return "\n".join(parts)
    raise RowError(
        field,
        f"expected text or a list of parts, got {type(content).__name__ if content is not None else 'null'}",
    )


def normalize_messages(
    turns: Any, field: str, role_key: str = "role", content_key: str = "content"
) -> list[Message]:
    """Canonical messages from a list of turn objects; roles mapped, empty turns rejected."""
    if not isinstance(turns, list):
        raise RowError(
            field, f"expected a list of turns, got {type(turns).__name__ if turns is not None else 'null'}"
        )
    if not turns:
        raise RowError(field, "empty conversation")
    if len(turns) > MAX_TURNS:
        raise RowError(field, f"{len(turns)} turns, more than {MAX_TURNS}: not a conversation to train on")
    out: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, Mapping):
            raise RowError(where, f"expected an object, got {type(turn).__name__}")
        raw_role = turn.get(role_key)
        if not isinstance(raw_role, str):
            raise RowError(f"{where}.{role_key}", "missing role")
        role = ROLE_MAP.get(raw_role.strip().lower())
        if role is None:
            raise RowError(f"{where}.{role_key}", f"unknown role {raw_role!r}")
        content = content_text(turn.get(content_key), f"{where}.{content_key}")
        if role == "assistant" and turn.get("tool_calls") and not content.strip():
            content = orjson.dumps(turn["tool_calls"]).decode()
        if not content.strip():
            raise RowError(f"{where}.{content_key}", "empty turn")
        out.append(msg(role, content))
    return out


def turn_extras(turns: list[Any], role_key: str = "role", content_key: str = "content") -> dict[str, Any]:
    """Per-turn fields besides role and content (loss_weight, name, tool_calls ...), so nothing is lost."""
    extra = [{k: v for k, v in t.items() if k not in (role_key, content_key)} for t in turns]
    return {"turn_fields": extra} if any(extra) else {}


def with_system(system: Any, messages: list[Message]) -> list[Message]:
    """``messages`` after the ``system`` field (none when absent, null or blank; an error when not text),
    unless they open with a system turn of their own: then the field must say the same (a different one
    would be dropped without a trace, and rows differing only in it would count as duplicates)."""
    prompt = optional_text(system, "system")
    if prompt is None:
        return messages
    if messages and messages[0]["role"] == "system":
        if messages[0]["content"].strip() != prompt.strip():
            raise RowError(
                "system",
                "two different system prompts: the system field and the conversation's own first (system) "
                "turn; keep one of them",
            )
        return messages
    return [msg("system", prompt), *messages]


# ------------------------------------------------------------------ the same, a column at a time
def map_roles(frame: pl.DataFrame, lists: Sequence[str] = (), turns: Sequence[str] = ()) -> pl.DataFrame:
    """``frame`` with the roles of its {role, content} turns (in the list columns ``lists`` and the struct
    columns ``turns``) mapped to canonical ones, null where unknown. Mapped in Python once per distinct
    spelling in the batch, with the row path's own ``ROLE_MAP.get(role.strip().lower())``, so odd
    spellings map exactly as they do row by row."""
    import polars as pl

    spellings = pl.concat(
        [
            frame.select(pl.col(c).list.eval(pl.element().struct.field("role")).explode()).to_series()
            for c in lists
        ]
        + [frame.get_column(c).struct.field("role") for c in turns]
    ).unique()
    known = {r: ROLE_MAP[r.strip().lower()] for r in spellings.drop_nulls() if r.strip().lower() in ROLE_MAP}

    def mapped(turn: Any) -> pl.Expr:
        return pl.struct(
            turn.field("role").replace_strict(known, default=None, return_dtype=pl.String).alias("role"),
            turn.field("content").alias("content"),
        )

    return frame.with_columns(
        *[pl.col(c).list.eval(mapped(pl.element().struct)) for c in lists],
        *[mapped(pl.col(c).struct).alias(c) for c in turns],
    )


def turns_ok(column: str) -> pl.Expr:
    """Where ``normalize_messages`` takes a list of mapped {role, content} strings as it is: 1 to
    MAX_TURNS turns, every role known (no null turn or role) and no content null or blank."""
    import polars as pl

    roles, contents = (pl.col(column).list.eval(pl.element().struct.field(f)) for f in ("role", "content"))
    return (
        pl.col(column).list.len().is_between(1, MAX_TURNS)
        & ~roles.list.eval(pl.element().is_null()).list.any()
        & ~contents.list.eval(blank_text(pl.element())).list.any()
    ).fill_null(False)


def system_clash(column: str, system: pl.Expr) -> pl.Expr:
    """Rows whose ``system`` string is not blank and is not exactly the text of the system turn that opens
    ``column``: ``with_system`` decides them (a RowError unless they differ only in surrounding spaces)."""
    import polars as pl

    first = pl.col(column).list.first().struct
    return (
        ~blank_text(system) & (first.field("role") == "system") & (first.field("content") != system)
    ).fill_null(False)


def system_first(column: str, system: pl.Expr) -> pl.Expr:
    """``with_system``: a system string that is not blank goes first, unless the first turn is a system's."""
    import polars as pl

    prepend = (
        ~blank_text(system)
        & (pl.col(column).list.eval(pl.element().struct.field("role")).list.first() != "system")
    ).fill_null(False)
    first = pl.concat_list(pl.struct(role=pl.lit("system"), content=system))
    return pl.when(prepend).then(first.list.concat(column)).otherwise(pl.col(column)).alias(column)


def messages_columnar(frame: Frame, system: pl.Expr | None = None) -> Taken:
    """``MessagesReader.convert`` over a frame of (_i, messages: list of {role, content} strings), for the
    rows where it is exact: 1 to MAX_TURNS turns, every role known, no content null or empty after
    ``str.strip()``, ending with assistant turns after a user, system or tool turn (else a RowError there,
    whose reason the row path keeps). Roles are mapped as ``map_roles`` says. With ``system`` (a string
    column), ``with_system`` is applied before the ending is checked, as ShareGPT's ``convert`` does.
    Returns (canonical sft frame with _i, the _i of the others)."""
    import polars as pl

    frame = map_roles(frame, lists=["messages"])
    frame = frame.with_columns(turns_ok("messages").alias("_ok"))
    if system is not None:
        frame = frame.with_columns((pl.col("_ok") & ~system_clash("messages", system)).alias("_ok"))
        frame = frame.with_columns(system_first("messages", system))
    roles = pl.col("messages").list.eval(pl.element().struct.field("role"))
    ok = (
        pl.col("_ok")
        & (roles.list.last() == "assistant")
        & roles.list.eval(pl.element() != "assistant").list.any()
    )
    return frame.filter(ok).select("_i", "messages"), frame.filter(~ok).get_column("_i").to_list()
