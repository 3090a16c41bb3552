"""What every reader is: a named converter from one input row to canonical records.

``convert`` is the specification and the general path: one parsed row (a dict) to zero or more canonical
records (the content fields of its kind plus ``meta``), or a ``RowError`` naming the field and the reason.
A reader may add ``layouts`` (Arrow schemas of rows) and one ``columnar`` function, the same over a frame
of such rows, which the shared ``take_rows``/``take_table`` apply to the rows that fit; the others, and
the rows it declines, go to ``convert``. Fields no layout column holds become ``meta``, for all readers
alike. Polars is imported only to convert a batch (the CLI lists the readers without loading it).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import orjson
import pyarrow as pa

from schemas import Kind

if TYPE_CHECKING:
    import polars as pl

Message = dict[str, str]
Record = dict[str, Any]
#: What ``columnar`` takes and gives (polars is imported only where a batch is converted).
Frame: TypeAlias = "pl.DataFrame"
Taken: TypeAlias = "tuple[pl.DataFrame, list[int]]"


class RowError(ValueError):
    """A row that cannot be normalised: names the field and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Reader(ABC):
    """Subclasses set ``name``/``kind``/``summary``/``reads``, implement ``sniff`` and ``convert``, and may
    give ``layouts`` and ``columnar``; ``readers.registry.register`` adds them to detection and the CLI."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    #: one line for `curate ingest --help` and error messages
    summary: ClassVar[str] = ""
    #: The fields of a row ``convert`` reads; every other field goes to the record's ``meta``.
    reads: ClassVar[frozenset[str]] = frozenset()
    #: The layouts ``columnar`` takes, most common first (their fields are among ``reads``). JSONL and
    #: Parquet batches are parsed by Arrow with one of them (``block_schema``; curation.ingest.blocks).
    layouts: ClassVar[tuple[pa.Schema, ...]] = ()

    @classmethod
    @abstractmethod
    def sniff(cls, row: Mapping[str, Any]) -> bool:
        """True if ``row`` looks like this reader's format."""

    @abstractmethod
    def convert(self, row: Mapping[str, Any]) -> list[Record]:
        """Canonical records for one row (raise RowError for a bad row)."""

    def columnar(self, frame: Frame) -> Taken:
        """``convert`` over a frame of ``_i`` and the columns of one of ``layouts`` (null where a value is
        missing or null), for the rows where it is exactly ``convert``: (their records, with ``_i`` and
        without ``meta``; the ``_i`` of the rows left to ``convert``)."""
        raise NotImplementedError(f"the {self.name} reader has no columnar path")

    def options(self) -> dict[str, Any]:
        """Options that change the output (part of the ingest unit key)."""
        return {}

    def fits(self) -> Callable[[Mapping[str, Any]], pa.Schema | None]:
        """A function of a row: the first of ``layouts`` it fits (each of its fields null, missing or of the
        layout's type, a struct with no other key; and no other field one the reader reads), or None."""
        checks, reads = [(s, _fits_row(s), frozenset(s.names)) for s in self.layouts], self.reads

        def fit(row: Mapping[str, Any]) -> pa.Schema | None:
            for schema, test, names in checks:
                if test(row) and (row.keys() <= names or not (row.keys() - names) & reads):
                    return schema
            return None

        return fit

    def block_schema(self, sample: Sequence[Mapping[str, Any]]) -> pa.Schema | None:
        """The layout a file's batches are parsed with: the one most of its first rows fit."""
        fit = self.fits()
        return max(self.layouts, key=lambda s: sum(fit(row) is s for row in sample)) if self.layouts else None

    def take_rows(self, values: Sequence[Mapping[str, Any] | None]) -> tuple[pl.DataFrame | None, list[int]]:
        """``columnar`` over the rows that fit a layout (None is a row left out), with their ``meta``:
        (their records, ``_i`` = position in ``values``; the positions left to ``convert``, in order)."""
        import polars as pl

        groups: dict[pa.Schema, list[int]] = {}  # layout -> positions of the rows that fit it
        meta: list[str] = ["{}"] * len(values)
        fit, reads = self.fits(), self.reads
        for i, row in enumerate(values):
            if row is None or (schema := fit(row)) is None:
                continue
            if not row.keys() <= reads:
                try:
                    meta[i] = meta_json({k: v for k, v in row.items() if k not in reads})
                except RowError:  # convert says so
                    continue
            groups.setdefault(schema, []).append(i)
        frames, rest = [], set(range(len(values))) - {i for idx in groups.values() for i in idx}
        for schema, idx in groups.items():
            rows = [values[i] or {} for i in idx]
            columns = {"_i": idx, **{f: [row.get(f) for row in rows] for f in schema.names}}
            types = {"_i": pl.Int64, **pl.from_arrow(schema.empty_table()).schema}  # type: ignore[union-attr]
            fast, slow = self.columnar(pl.DataFrame(columns, schema=types))
            frames.append(fast)
            rest.update(slow)
        if not frames:
            return None, sorted(rest)
        fast = frames[0] if len(frames) == 1 else pl.concat(frames).sort("_i")
        return _with_meta(fast, meta), sorted(rest)

    def take_table(self, table: pa.Table, meta: list[str] | None) -> tuple[pl.DataFrame, list[int]]:
        """``columnar`` over an Arrow batch in one of ``layouts``, with each row's ``meta`` (JSON, "{}" when
        None): (the records it made, ``_i`` = row position; the positions left to ``convert``)."""
        import polars as pl

        frame = pl.from_arrow(table).with_row_index("_i").with_columns(pl.col("_i").cast(pl.Int64))
        fast, slow = self.columnar(frame)  # type: ignore[arg-type]
        return _with_meta(fast, meta), sorted(slow)


def _with_meta(fast: pl.DataFrame, meta: list[str] | None) -> pl.DataFrame:
    import polars as pl

    column = pl.lit("{}") if meta is None else pl.Series(meta, dtype=pl.String).gather(fast.get_column("_i"))
    return fast.with_columns(column.alias("meta"))


def _fits(typ: pa.DataType) -> Callable[[Any], bool]:
    """A test that a Python value is what Arrow holds as ``typ`` (null anywhere)."""
    if pa.types.is_string(typ):
        return lambda v: v is None or type(v) is str
    if pa.types.is_list(typ):
        item = _fits(typ.value_type)
        return lambda v: v is None or (type(v) is list and all(map(item, v)))
    if pa.types.is_struct(typ):
        fields = [(f.name, _fits(f.type)) for f in typ]
        names = {n for n, _ in fields}
        return lambda v: (
            v is None or (type(v) is dict and v.keys() <= names and all(test(v.get(n)) for n, test in fields))
        )
    raise TypeError(f"a layout of strings, lists and structs, not {typ}")


@functools.cache
def _fits_row(schema: pa.Schema) -> Callable[[Mapping[str, Any]], bool]:
    fields = [(f.name, _fits(f.type)) for f in schema]

    def test(row: Mapping[str, Any]) -> bool:
        for name, fits in fields:  # noqa: SIM110 (a generator costs more than the test itself)
            if not fits(row.get(name)):
                return False
        return True

    return test


# ------------------------------------------------------------------ helpers
#: Exactly the characters Python's ``str.strip()`` removes (``str.isspace``), so stripped lengths agree
#: with Python; tests check it against the running interpreter.
PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def blank_text(texts: pl.Expr) -> pl.Expr:
    """Null, or empty after Python's ``str.strip()``: what the readers' ``text`` and turn checks refuse."""
    return texts.is_null() | (texts.str.strip_chars(PY_WHITESPACE).str.len_bytes() == 0)


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


def dense_grades(scores: list[float], higher_is_better: bool = True) -> list[int]:
    """Integer grades of a ranking's candidates from scores (ratings, ranks): equal scores share a grade
    and stay ties, order is preserved, best is highest."""
    levels = sorted(set(scores), reverse=not higher_is_better)
    index = {s: i for i, s in enumerate(levels)}
    return [index[s] for s in scores]


def candidate(content: str, grade: int, is_reference: bool = False, meta: str = "{}") -> dict[str, Any]:
    return {"content": content, "grade": int(grade), "is_reference": is_reference, "meta": meta}
