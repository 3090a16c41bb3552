"""Conversation readers: OpenAI messages and ShareGPT (both SFT and pair variants)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from curation.ingest.columnar import (
    blank_text,
    indexed,
    rows_columnar,
    string_rows_columnar,
    string_schema,
)
from curation.ingest.readers.base import (
    Message,
    Reader,
    Record,
    RowError,
    extra_meta,
    msg,
    optional_text,
    pair_from_conversations,
    split_prompt,
    text,
)

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
            import orjson

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
    unless they open with a system turn of their own."""
    prompt = optional_text(system, "system")
    if prompt is not None and (not messages or messages[0]["role"] != "system"):
        return [msg("system", prompt), *messages]
    return messages


class MessagesReader(Reader):
    """OpenAI chat format: ``{"messages": [{"role", "content"}]}`` (content as text or parts)."""

    name = "messages"
    kind = "sft"
    summary = "OpenAI messages: {messages: [{role, content}]} (string or list-of-parts content)"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        m = row.get("messages")
        return (
            isinstance(m, list)
            and bool(m)
            and isinstance(m[0], Mapping)
            and "role" in m[0]
            and "chosen" not in row
        )

    #: What the Arrow paths parse: only a list of {role, content} strings (curation.ingest.blocks).
    arrow_schema = pa.schema([("messages", pa.list_(ROLE_CONTENT))])
    reads = frozenset({"messages"})

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for rows that are only ``messages`` whose turns are only {role, content}
        strings (see ``messages_columnar``); the rest go row by row."""

        def takes(v: Mapping[str, Any]) -> bool:
            return len(v) == 1 and _plain_turns(v.get("messages"))

        return rows_columnar(values, takes, self.arrow_schema, messages_columnar)

    def convert_arrow(self, table: pa.Table) -> tuple[pl.DataFrame | None, list[int]]:
        """``convert_columns`` for rows parsed by Arrow as exactly {messages: [{role, content: string}]}
        (content as a list of parts, tool calls or any other field make Arrow refuse the whole batch,
        which then goes row by row)."""
        return messages_columnar(indexed(table))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = normalize_messages(row.get("messages"), "messages")
        split_prompt(messages, "messages")  # must end with an assistant turn after a user turn
        meta = extra_meta(row, self.reads) | turn_extras(row["messages"])
        return [{"messages": messages, "meta": meta}]


def _plain_turns(turns: Any, role: str = "role", content: str = "content") -> bool:
    return isinstance(turns, list) and all(
        type(t) is dict and len(t) == 2 and type(t.get(role)) is str and type(t.get(content)) is str
        for t in turns
    )


_TURN = pl.element().struct


def _map_roles(frame: pl.DataFrame, lists: Sequence[str] = (), turns: Sequence[str] = ()) -> pl.DataFrame:
    """``frame`` with the roles of its {role, content} turns (in the list columns ``lists`` and the struct
    columns ``turns``) mapped to canonical ones, null where unknown. Mapped in Python once per distinct
    spelling in the batch, with the row path's own ``ROLE_MAP.get(role.strip().lower())``, so odd
    spellings map exactly as they do row by row."""
    spellings = pl.concat(
        [frame.select(pl.col(c).list.eval(_TURN.field("role")).explode()).to_series() for c in lists]
        + [frame.get_column(c).struct.field("role") for c in turns]
    ).unique()
    known = {r: ROLE_MAP[r.strip().lower()] for r in spellings.drop_nulls() if r.strip().lower() in ROLE_MAP}

    def mapped(turn: Any) -> pl.Expr:
        return pl.struct(
            turn.field("role").replace_strict(known, default=None, return_dtype=pl.String).alias("role"),
            turn.field("content").alias("content"),
        )

    return frame.with_columns(
        *[pl.col(c).list.eval(mapped(_TURN)) for c in lists],
        *[mapped(pl.col(c).struct).alias(c) for c in turns],
    )


def _turns_ok(column: str) -> pl.Expr:
    """Where ``normalize_messages`` takes a list of mapped {role, content} strings as it is: 1 to
    MAX_TURNS turns, every role known (no null turn or role) and no content null or blank."""
    roles, contents = (pl.col(column).list.eval(_TURN.field(f)) for f in ("role", "content"))
    return (
        pl.col(column).list.len().is_between(1, MAX_TURNS)
        & ~roles.list.eval(pl.element().is_null()).list.any()
        & ~contents.list.eval(blank_text(pl.element())).list.any()
    ).fill_null(False)


def _with_system(column: str, system: pl.Expr) -> pl.Expr:
    """``with_system``: a system string that is not blank goes first, unless the first turn is a system turn."""
    prepend = (
        ~blank_text(system) & (pl.col(column).list.eval(_TURN.field("role")).list.first() != "system")
    ).fill_null(False)
    first = pl.concat_list(pl.struct(role=pl.lit("system"), content=system))
    return pl.when(prepend).then(first.list.concat(column)).otherwise(pl.col(column)).alias(column)


def messages_columnar(frame: pl.DataFrame, system: pl.Expr | None = None) -> tuple[pl.DataFrame, list[int]]:
    """``MessagesReader.convert`` over a frame of (_i, messages: list of {role, content} strings), for the
    rows where it is exact: 1 to MAX_TURNS turns, every role known, no content null or empty after
    ``str.strip()``, ending with assistant turns after a user, system or tool turn (else a RowError there,
    whose reason the row path keeps). Roles are mapped as ``_map_roles`` says. With ``system`` (a string
    column), ``with_system`` is applied before the ending is checked, as ShareGPT's ``convert`` does.
    Returns (canonical sft frame with _i, the _i of the others)."""
    frame = _map_roles(frame, lists=["messages"])
    frame = frame.with_columns(_turns_ok("messages").alias("_ok"))
    if system is not None:
        frame = frame.with_columns(_with_system("messages", system))
    roles = pl.col("messages").list.eval(_TURN.field("role"))
    ok = (
        pl.col("_ok")
        & (roles.list.last() == "assistant")
        & roles.list.eval(pl.element() != "assistant").list.any()
    )
    slow = frame.filter(~ok).get_column("_i").to_list()
    fast = frame.filter(ok).select("_i", "messages", pl.lit("{}").alias("meta"))
    return fast, slow


#: A ShareGPT turn as the Arrow paths parse it.
SHAREGPT_TURN = pa.struct([("from", pa.string()), ("value", pa.string())])


class ShareGPTReader(Reader):
    """ShareGPT: ``{"conversations": [{"from", "value"}], "system"?, "tools"?}``."""

    name = "sharegpt"
    kind = "sft"
    summary = "ShareGPT: {conversations: [{from, value}]}; roles human/gpt/system/function_call/observation"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        c = row.get("conversations")
        return (
            isinstance(c, list)
            and bool(c)
            and isinstance(c[0], Mapping)
            and "from" in c[0]
            and "chosen" not in row
        )

    #: What the Arrow paths parse: {from, value} turns and an optional system prompt, all strings.
    arrow_schema = pa.schema([("conversations", pa.list_(SHAREGPT_TURN)), ("system", pa.string())])
    reads = frozenset({"conversations", "system"})

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for rows of only ``conversations`` of {from, value} strings (and a string
        ``system``); the rest go row by row."""

        def takes(v: Mapping[str, Any]) -> bool:
            return _plain_turns(v.get("conversations"), "from", "value") and (
                v.keys() == {"conversations"} or (v.keys() == self.reads and type(v["system"]) is str)
            )

        return rows_columnar(values, takes, self.arrow_schema, self._columnar)

    def convert_arrow(self, table: pa.Table) -> tuple[pl.DataFrame | None, list[int]]:
        """``convert_columns`` for rows parsed by Arrow as exactly ``arrow_schema`` (a missing system is
        null: none, as in the row path; tools or any other field make Arrow refuse the batch)."""
        return self._columnar(indexed(table))

    @staticmethod
    def _columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
        turns = pl.col("conversations").list.eval(pl.element().struct.rename_fields(["role", "content"]))
        frame = frame.select("_i", turns.alias("messages"), "system")
        return messages_columnar(frame, system=pl.col("system"))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        messages = normalize_messages(row.get("conversations"), "conversations", "from", "value")
        messages = with_system(row.get("system"), messages)
        split_prompt(messages, "conversations")
        meta = extra_meta(row, self.reads) | turn_extras(row["conversations"], "from", "value")
        return [{"messages": messages, "meta": meta}]


class ShareGPTPairReader(Reader):
    """ShareGPT preference: conversations plus ``chosen``/``rejected`` turn objects."""

    name = "sharegpt_pair"
    kind = "pair"
    summary = "ShareGPT pairs: {conversations, chosen: {from, value}, rejected: {from, value}}"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        return isinstance(row.get("conversations"), list) and isinstance(row.get("chosen"), Mapping | list)

    #: What the Arrow paths parse: {from, value} turns, one {from, value} turn per response and an
    #: optional system prompt, all strings (responses given as lists of turns make Arrow refuse the batch).
    arrow_schema = pa.schema(
        [
            ("conversations", pa.list_(SHAREGPT_TURN)),
            ("chosen", SHAREGPT_TURN),
            ("rejected", SHAREGPT_TURN),
            ("system", pa.string()),
        ]
    )
    reads = frozenset({"conversations", "system", "chosen", "rejected"})

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for rows of only {from, value} strings (conversations, one turn per
        response) and a string ``system``, if any; the rest go row by row."""

        def takes(v: Mapping[str, Any]) -> bool:
            return (
                _plain_turns(v.get("conversations"), "from", "value")
                and _plain_turns([v.get("chosen"), v.get("rejected")], "from", "value")
                and v.keys() <= self.reads
                and type(v.get("system", "")) is str
            )

        return rows_columnar(values, takes, self.arrow_schema, sharegpt_pairs_columnar)

    def convert_arrow(self, table: pa.Table) -> tuple[pl.DataFrame | None, list[int]]:
        """``convert_columns`` for rows parsed by Arrow as exactly ``arrow_schema`` (a missing field is
        null; such rows go to ``convert``)."""
        return sharegpt_pairs_columnar(indexed(table))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        prompt = with_system(
            row.get("system"), normalize_messages(row.get("conversations"), "conversations", "from", "value")
        )
        if prompt[-1]["role"] == "assistant":
            raise RowError("conversations", "prompt ends with an assistant turn")
        sides = {}
        for side in ("chosen", "rejected"):
            value = row.get(side)
            turns = value if isinstance(value, list) else [value] if value is not None else None
            sides[side] = normalize_messages(turns, side, "from", "value")
            if any(m["role"] != "assistant" for m in sides[side]):
                raise RowError(side, "response turns must come from the assistant (gpt)")
        return [
            {
                "prompt": prompt,
                "chosen": sides["chosen"],
                "rejected": sides["rejected"],
                "strength": None,
                "meta": extra_meta(row, self.reads),
            }
        ]


def sharegpt_pairs_columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """``ShareGPTPairReader.convert`` over a frame of (_i, conversations: list of {from, value}, chosen and
    rejected: {from, value}, system) strings, for the rows where it is exact: conversations that
    ``normalize_messages`` takes (``_turns_ok``), the system prompt put first as ``with_system`` does,
    a prompt that does not end with an assistant turn, and responses from a role that maps to the
    assistant with a text that is not blank (else a RowError there, whose reason the row path keeps).
    Returns (canonical pair frame with _i, the _i of the others)."""
    names = ["role", "content"]
    frame = frame.select(
        "_i",
        pl.col("conversations").list.eval(_TURN.rename_fields(names)).alias("prompt"),
        *[pl.col(side).struct.rename_fields(names) for side in ("chosen", "rejected")],
        "system",
    )
    frame = _map_roles(frame, lists=["prompt"], turns=["chosen", "rejected"])
    ok = _turns_ok("prompt")
    for side in ("chosen", "rejected"):
        turn = pl.col(side).struct
        ok = ok & (turn.field("role") == "assistant").fill_null(False) & ~blank_text(turn.field("content"))
    frame = frame.with_columns(ok.alias("_ok")).with_columns(_with_system("prompt", pl.col("system")))
    ok = pl.col("_ok") & (pl.col("prompt").list.eval(_TURN.field("role")).list.last() != "assistant")
    slow = frame.filter(~ok).get_column("_i").to_list()
    fast = frame.filter(ok).select(
        "_i",
        "prompt",
        *[pl.concat_list(side).alias(side) for side in ("chosen", "rejected")],
        pl.lit(None, dtype=pl.Float64).alias("strength"),
        pl.lit("{}").alias("meta"),
    )
    return fast, slow


class TRLPreferenceReader(Reader):
    """TRL preference: ``prompt``/``chosen``/``rejected`` as strings or messages (explicit or implicit
    prompt). With a prompt, message-list responses that begin with that prompt (whole conversations, as in
    HuggingFaceH4/ultrafeedback_binarized) are the turns after it."""

    name = "trl"
    kind = "pair"
    summary = "TRL preference: {prompt?, chosen, rejected} as strings or message lists"

    @classmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        c, r = row.get("chosen"), row.get("rejected")
        if isinstance(c, str) and isinstance(r, str):
            return "prompt" in row or "instruction" not in row
        return isinstance(c, list) and isinstance(r, list)

    #: The only fields of a row ``convert_arrow`` takes (curation.ingest.blocks parses exactly these).
    arrow_fields = ("prompt", "chosen", "rejected")
    arrow_schema = string_schema(arrow_fields)
    #: The other layout the Arrow paths take: a prompt string and {role, content} message lists (the
    #: layout of HuggingFaceH4/ultrafeedback_binarized, whose ``messages`` repeats ``chosen`` and is dropped).
    message_schema = pa.schema(
        [("prompt", pa.string()), *[(f, pa.list_(ROLE_CONTENT)) for f in ("chosen", "rejected", "messages")]]
    )
    reads = frozenset({*arrow_fields, "messages"})

    def block_schema(self, sample: Sequence[Mapping[str, Any]]) -> pa.Schema:
        """``message_schema`` for a file whose first rows give the responses as lists, else ``arrow_schema``."""
        first = next((r.get("chosen") for r in sample if r.get("chosen") is not None), None)
        return self.message_schema if isinstance(first, list) else self.arrow_schema

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[pl.DataFrame | None, list[int]]:
        """Vectorised ``convert`` for rows of exactly three strings (see ``trl_string_pairs_columnar``) and
        for rows of only a prompt string and lists of {role, content} strings (``trl_message_pairs_columnar``);
        the rest go row by row."""

        def lists(v: Mapping[str, Any]) -> bool:
            return (
                v.keys() <= self.reads
                and type(v.get("prompt")) is str
                and _plain_turns(v.get("chosen"))
                and _plain_turns(v.get("rejected"))
                and (v.get("messages") is None or _plain_turns(v["messages"]))  # ignored, as convert does
            )

        strings, rest = string_rows_columnar(values, self.arrow_fields, trl_string_pairs_columnar)
        listed, left = rows_columnar(values, lists, self.message_schema, trl_message_pairs_columnar)
        # a row one path takes is one the other leaves: the rows left by both go row by row
        left = sorted(set(rest) & set(left))
        if strings is None or listed is None:
            return (listed if strings is None else strings), left
        return pl.concat([strings, listed]).sort("_i"), left

    def convert_arrow(self, table: pa.Table) -> tuple[pl.DataFrame | None, list[int]]:
        """``convert_columns`` for rows parsed by Arrow as exactly ``arrow_schema`` or ``message_schema``
        (the one ``block_schema`` chose; a missing or null field is null, and such rows go to ``convert``;
        a row in the other layout makes Arrow refuse the whole batch, which then goes row by row)."""
        if pa.types.is_list(table.schema.field("chosen").type):
            return trl_message_pairs_columnar(indexed(table))
        return trl_string_pairs_columnar(indexed(table))

    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        meta = extra_meta(row, self.reads)
        prompt_raw = row.get("prompt")
        if prompt_raw is None:  # implicit prompt: two whole conversations
            chosen = normalize_messages(row.get("chosen"), "chosen")
            rejected = normalize_messages(row.get("rejected"), "rejected")
            rec = pair_from_conversations(chosen, rejected, "chosen")
            rec["meta"] = meta
            return [rec]
        if isinstance(prompt_raw, str):
            prompt = [msg("user", text(prompt_raw, "prompt"))]
        else:
            prompt = normalize_messages(prompt_raw, "prompt")
        sides = {}
        for side in ("chosen", "rejected"):
            value = row.get(side)
            sides[side] = (
                [msg("assistant", text(value, side))]
                if isinstance(value, str)
                else normalize_messages(value, side)
            )
        n = len(prompt)
        if all(turns[:n] == prompt for turns in sides.values()):
            # whole conversations that repeat the prompt (HuggingFaceH4/ultrafeedback_binarized): the
            # responses are what follows it
            for side, turns in sides.items():
                if len(turns) == n:
                    raise RowError(side, "no response after the prompt it repeats")
                sides[side] = turns[n:]
        return [
            {
                "prompt": prompt,
                "chosen": sides["chosen"],
                "rejected": sides["rejected"],
                "strength": None,
                "meta": meta,
            }
        ]


def trl_string_pairs_columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """``TRLPreferenceReader.convert`` over a frame of (_i, prompt, chosen, rejected) strings, for the rows
    where it is exact: no null and no text that is empty after ``str.strip()`` (those raise a RowError
    there, whose reason the row path keeps). Returns (canonical pair frame with _i, the _i of the others)."""
    fields = ("prompt", "chosen", "rejected")
    ok = ~pl.any_horizontal(*[blank_text(pl.col(f)) for f in fields])
    slow = frame.filter(~ok).get_column("_i").to_list()

    def turn(role: str, field: str) -> pl.Expr:
        return pl.concat_list(pl.struct(role=pl.lit(role), content=pl.col(field))).alias(field)

    fast = frame.filter(ok).select(
        "_i",
        turn("user", "prompt"),
        turn("assistant", "chosen"),
        turn("assistant", "rejected"),
        pl.lit(None, dtype=pl.Float64).alias("strength"),
        pl.lit("{}").alias("meta"),
    )
    return fast, slow


def trl_message_pairs_columnar(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """``TRLPreferenceReader.convert`` over a frame of (_i, prompt string, chosen and rejected: lists of
    {role, content} strings; ``messages`` is ignored), for the rows where it is exact: a prompt that is
    not blank, responses that ``normalize_messages`` takes (``_turns_ok``), and, where both responses
    begin with the prompt's user turn, a turn after it in each (else a RowError there, whose reason the
    row path keeps). Such responses become the turns after the prompt. Returns (canonical pair frame
    with _i, the _i of the others)."""
    sides = ("chosen", "rejected")
    frame = _map_roles(frame.select("_i", "prompt", *sides), lists=list(sides))

    def repeats_prompt(side: str) -> pl.Expr:
        first = pl.col(side).list.first().struct
        return ((first.field("role") == "user") & (first.field("content") == pl.col("prompt"))).fill_null(
            False
        )

    repeated = repeats_prompt("chosen") & repeats_prompt("rejected")
    ok = ~blank_text(pl.col("prompt")) & _turns_ok("chosen") & _turns_ok("rejected")
    ok = ok & ~(repeated & pl.min_horizontal(*[pl.col(side).list.len() for side in sides]).eq(1))
    frame = frame.with_columns(ok.alias("_ok"), repeated.alias("_repeated"))
    slow = frame.filter(~pl.col("_ok")).get_column("_i").to_list()
    fast = frame.filter(pl.col("_ok")).select(
        "_i",
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("prompt"))).alias("prompt"),
        *[
            pl.when(pl.col("_repeated")).then(pl.col(side).list.slice(1)).otherwise(pl.col(side)).alias(side)
            for side in sides
        ],
        pl.lit(None, dtype=pl.Float64).alias("strength"),
        pl.lit("{}").alias("meta"),
    )
    return fast, slow
