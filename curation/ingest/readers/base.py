"""What every reader is: a named converter from one input row to canonical records.

A reader looks at one parsed row (a dict) and returns zero or more canonical
records (dicts with the content fields of its kind plus ``meta``), or raises
``RowError`` naming the field and the reason. It never sees provenance; the
pipeline adds that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import orjson
import pyarrow as pa

from schemas import Kind

Message = dict[str, str]
Record = dict[str, Any]


class RowError(ValueError):
    """A row that cannot be normalised: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Reader(ABC):
    """Base class: subclasses set ``name``/``kind`` and implement ``convert`` and ``sniff``."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    #: one line for `curate ingest --help` and error messages
    summary: ClassVar[str] = ""
    #: The columns ``convert_arrow`` takes, if the reader has one: JSONL and Parquet batches whose rows
    #: fit this schema exactly reach it as Arrow tables (curation.ingest.blocks), the rest go row by row.
    arrow_schema: ClassVar[pa.Schema | None] = None
    #: The fields of a row ``convert`` reads; every other field goes to the record's ``meta`` (so a
    #: Parquet file with other columns still takes the Arrow path, its other columns becoming ``meta``).
    reads: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    @abstractmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        """True if ``row`` looks like this reader's format."""

    @abstractmethod
    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        """Canonical records for one row (raise RowError for a bad row)."""

    def convert_columns(self, values: Sequence[Mapping[str, Any]]) -> tuple[Any, list[int]]:
        """Optional vectorised ``convert``: (a polars frame of canonical records with ``_i``, the
        position in ``values`` of each row it made, or None; the positions left for ``convert``).
        Readers override it for the rows where a column-at-a-time version is exactly equivalent."""
        return None, list(range(len(values)))

    def convert_arrow(self, table: pa.Table) -> tuple[Any, list[int]]:
        """``convert_columns`` for an Arrow table of ``arrow_schema`` (a missing or null value is null):
        (the frame of the rows it made, with ``_i`` = row position; the positions left for ``convert``)."""
        raise NotImplementedError(f"the {self.name} reader has no Arrow path (arrow_schema is None)")

    def block_schema(self, sample: Sequence[Mapping[str, Any]]) -> pa.Schema | None:
        """The Arrow schema a file's batches are read with (``arrow_schema``), given the first rows of
        the file; a reader with two columnar layouts picks the one the file is in."""
        return self.arrow_schema

    def options(self) -> dict[str, Any]:
        """Options that change the output (part of the ingest unit key)."""
        return {}


# ------------------------------------------------------------------ helpers
def require(row: Mapping[str, Any], field: str) -> Any:
    if field not in row or row[field] is None:
        raise RowError(field, "missing")
    return row[field]


def text(value: Any, field: str, allow_empty: bool = False) -> str:
    """A string field. Anything else is an error, numbers too: ``5`` would become ``"5"`` and ``1.50``
    ``"1.5"``, a change nobody asked for; the reason says how to keep the value."""
    if not isinstance(value, str):
        raise RowError(field, f"expected text, got {describe(value)}")
    if not allow_empty and not value.strip():
        raise RowError(field, "empty text")
    return value


def optional_text(value: Any, field: str) -> str | None:
    """An optional string field (a system prompt): None when absent, null or blank; an error when it is
    not text (it is never dropped without a trace)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return text(value, field)


def describe(value: Any) -> str:
    """A value's JSON type for an error message, with the value itself when it is a short scalar."""
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        return f"{type(value).__name__} {shown} (write it as a JSON string to keep it as text)"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def msg(role: str, content: str) -> Message:
    return {"role": role, "content": content}


def split_prompt(messages: list[Message], field: str) -> tuple[list[Message], list[Message]]:
    """Split a conversation into (prompt up to the last non-assistant turn, final assistant turns)."""
    cut = len(messages)
    while cut > 0 and messages[cut - 1]["role"] == "assistant":
        cut -= 1
    if cut == len(messages):
        raise RowError(field, "conversation does not end with an assistant turn")
    if cut == 0:
        raise RowError(field, "conversation has no user turn before the response")
    return messages[:cut], messages[cut:]


def common_prefix(a: list[Message], b: list[Message]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pair_from_conversations(chosen: list[Message], rejected: list[Message], field: str) -> Record:
    """A pair from two whole conversations that share a prefix (HH-RLHF, implicit-prompt TRL)."""
    n = common_prefix(chosen, rejected)
    # The shared prefix ends at the last user turn; responses are what follows.
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1
    prompt, c_tail, r_tail = chosen[:n], chosen[n:], rejected[n:]
    if not prompt:
        raise RowError(field, "chosen and rejected share no prompt")
    if not c_tail or not r_tail:
        raise RowError(field, "one of chosen/rejected has no response after the shared prompt")
    return {"prompt": prompt, "chosen": c_tail, "rejected": r_tail, "strength": None, "meta": {}}


def meta_json(meta: Mapping[str, Any] | None) -> str:
    """A record's ``meta`` as stored: JSON with sorted keys (a value JSON cannot hold, as its text).

    Raises RowError naming the field when a value cannot be written at all (orjson writes at most 254
    levels of nesting, and only text keys)."""
    try:
        return orjson.dumps(meta or {}, default=str, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        for key, value in (meta or {}).items():
            try:
                orjson.dumps({key: value}, default=str)
            except TypeError:
                raise RowError(str(key), f"cannot be kept in meta as JSON: {exc}") from None
        raise RowError("meta", f"cannot be kept as JSON: {exc}") from None


def extra_meta(row: Mapping[str, Any], used: set[str] | frozenset[str]) -> dict[str, Any]:
    """Fields of the row no canonical column holds."""
    return {k: v for k, v in row.items() if k not in used}
