"""Column-at-a-time work on a batch of canonical records: content ids, derived scalars, dedup.

Everything here computes, over a whole Arrow batch, exactly what the per-record
definitions compute for one record: ``content_ids`` equals ``schemas.ids.record_id``
row by row, ``derive_frame`` equals ``validate.derive`` (the tests check both
with hypothesis). Only the rare failing rows go back to Python for the detail
of their error message.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from curation.ingest.readers.base import PY_WHITESPACE
from curation.ingest.validate import INVISIBLE, candidates_agree, messages_key
from schemas import Kind

_ROLE_LETTER = {"system": "S", "user": "U", "assistant": "A", "tool": "T"}
_MESSAGE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "sft": (("messages", "m"),),
    "pair": (("prompt", "p"), ("chosen", "c"), ("rejected", "r")),
    "ranking": (("prompt", "p"),),
}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UNHEX = np.full(256, 255, dtype=np.uint8)
_UNHEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def _len_prefixed(e: pl.Expr) -> pl.Expr:
    return pl.format("{}:{}", e.str.len_chars(), e)


#: ``_len_prefixed`` of the canonical roles, looked up rather than formatted for every message
_ROLE_KEY = {role: f"{len(role)}:{role}" for role in _ROLE_LETTER}


def _messages_key(col: str) -> pl.Expr:
    role, content = pl.element().struct.field("role"), pl.element().struct.field("content")
    role_key = (
        pl.when(role.is_in(list(_ROLE_KEY)))
        .then(role.replace_strict(_ROLE_KEY, default=""))
        .otherwise(_len_prefixed(role))
    )
    return (
        pl.col(col)
        .list.eval(pl.concat_str(role_key, content.str.len_chars().cast(pl.String), pl.lit(":"), content))
        .list.join("")
        .fill_null("")
    )


def _candidates_key() -> pl.Expr:
    e = pl.element()
    return (
        pl.col("candidates")
        .list.eval(
            pl.concat_str(
                pl.lit("k"),
                _len_prefixed(e.struct.field("content")),
                _len_prefixed(e.struct.field("grade").cast(pl.Int64).cast(pl.String)),
                pl.when(e.struct.field("is_reference")).then(pl.lit("1")).otherwise(pl.lit("0")),
            )
        )
        .list.join("")
        .fill_null("")
    )


def content_key_expr(kind: Kind) -> pl.Expr:
    """``schemas.ids.content_key`` of each record, as one string column."""
    parts: list[pl.Expr] = [pl.lit(f"{kind}\x1d")]
    for col, tag in _MESSAGE_COLUMNS[kind]:
        parts += [pl.lit(tag), _messages_key(col), pl.lit("\x1e")]
    if kind == "ranking":
        parts.append(_candidates_key())
    return pl.concat_str(parts)


def xxh3_digests(keys: pl.Series) -> np.ndarray:
    """xxh3-128 of each UTF-8 string, as a numpy array of 16-byte digests (big-endian, like hexdigest)."""
    arr = keys.to_arrow()
    arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
    data = memoryview(arr.buffers()[2] or b"")
    digest = xxhash.xxh3_128_digest
    out = b"".join(
        [digest(data[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    )
    return np.frombuffer(out, dtype="S16")


def hex_ids(digests: np.ndarray) -> pa.Array:
    """32-character lowercase hex strings of 16-byte digests.

    The Arrow array is built from its buffers (fixed 32-byte offsets over the hex characters):
    ``pa.array`` on a numpy ``S32`` array goes through one Python bytes object per id, 50x slower.
    """
    raw = digests.view(np.uint8).reshape(-1, 16)
    chars = np.empty((len(raw), 32), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    # 64-bit offsets, then the cast checks that they fit the 32-bit string type (int32 ones would wrap
    # silently past 67M ids in one call)
    offsets = np.arange(0, 32 * (len(raw) + 1), 32, dtype=np.int64)
    buffers = [pa.py_buffer(offsets), pa.py_buffer(chars.reshape(-1))]
    return pa.LargeStringArray.from_buffers(len(raw), *buffers).cast(pa.string())


def digests_from_hex(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Inverse of ``hex_ids`` (ids written by earlier ingests)."""
    if len(ids) == 0:
        return np.array([], dtype="S16")
    chars = np.asarray(ids.to_numpy(zero_copy_only=False).astype("S32")).view(np.uint8).reshape(-1, 32)
    nib = _UNHEX[chars]
    return ((nib[:, 0::2] << 4) | nib[:, 1::2]).astype(np.uint8).reshape(-1).view("S16")


def _halves(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first 8 bytes, last 8 bytes) of 16-byte digests as native uint64s; their order is the digests' order."""
    words = np.ascontiguousarray(digests).view(">u8").astype(np.uint64)
    return words[0::2], words[1::2]


class IdSet:
    """Ids already in the store or accepted earlier: 16-byte digests in a few runs sorted by their
    first 8 bytes (16 bytes per id, plus 8 for the key).

    Runs are merged as in a binary counter (a run is merged into the one before it once it is at least
    half its size), so there are O(log n) runs and an id is moved O(log n) times. A lookup sorts its
    queries once and binary-searches each run on the 8-byte prefix as uint64 (several times faster than
    comparing 16-byte strings, and few numpy calls, each of which gives up the GIL); the full digest
    confirms, and the rare ids that share a prefix are compared one by one.
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (uint64 prefixes sorted, digests in that order)

    @classmethod
    def from_parquet(cls, files: list) -> IdSet:
        s = cls()
        for f in files:
            s.add(digests_from_hex(pq.read_table(f, columns=["id"]).column("id")))
        return s

    def add(self, digests: np.ndarray) -> None:
        if not len(digests):
            return
        prefix = _halves(digests)[0]
        order = np.argsort(prefix, kind="stable")
        self.runs.append((prefix[order], digests[order]))
        while len(self.runs) > 1 and 2 * len(self.runs[-1][0]) >= len(self.runs[-2][0]):
            (p1, d1), (p2, d2) = self.runs.pop(-2), self.runs.pop()
            prefix = np.concatenate([p1, p2])
            order = np.argsort(prefix, kind="stable")  # two sorted runs: a merge
            self.runs.append((prefix[order], np.concatenate([d1, d2])[order]))

    def contains(self, digests: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(digests), dtype=bool)
        if not len(digests) or not self.runs:
            return hit
        prefix = _halves(digests)[0]
        order = np.argsort(prefix)
        prefix, queries = prefix[order], digests[order]
        found = np.zeros(len(digests), dtype=bool)
        for run_prefix, run in self.runs:
            pos = np.minimum(np.searchsorted(run_prefix, prefix), len(run) - 1)
            same = run_prefix[pos] == prefix
            exact = same & (run[pos] == queries)
            for i in np.flatnonzero(same & ~exact):  # another id has the same first 8 bytes
                end = np.searchsorted(run_prefix, prefix[i], side="right")
                exact[i] = bool((run[pos[i] : end] == queries[i]).any())
            found |= exact
        hit[order] = found
        return hit

    def __len__(self) -> int:
        return sum(len(p) for p, _ in self.runs)


def first_occurrence(digests: np.ndarray) -> np.ndarray:
    """True at the first position of each distinct digest."""
    first = np.ones(len(digests), dtype=bool)
    if len(digests) > 1:
        hi, lo = _halves(digests)
        order = np.lexsort((lo, hi))  # stable: equal digests keep their order
        ordered = digests[order]
        first[order[1:]] = ordered[1:] != ordered[:-1]
    return first


# ------------------------------------------------------------------ derived scalar columns
def _stats(col: str, tag: str) -> list[pl.Expr]:
    role, content = pl.element().struct.field("role"), pl.element().struct.field("content")
    return [
        pl.col(col)
        .list.eval(content.str.strip_chars(PY_WHITESPACE).str.len_chars())
        .list.min()
        .fill_null(0)
        .alias(f"_min_{tag}"),
        pl.col(col).list.eval(content.str.len_chars()).list.sum().fill_null(0).alias(f"_chars_{tag}"),
        pl.col(col)
        .list.eval(role.replace_strict(_ROLE_LETTER, default="?"))
        .list.join("")
        .fill_null("")
        .alias(f"_roles_{tag}"),
    ]


def derive_columns(kind: Kind) -> list[pl.Expr]:
    exprs: list[pl.Expr] = []
    for col, tag in _MESSAGE_COLUMNS[kind]:
        exprs += _stats(col, tag)
    if kind == "ranking":
        e = pl.element().struct
        exprs += [
            pl.col("candidates").list.len().alias("n_candidates"),
            pl.col("candidates")
            .list.eval(e.field("content").str.strip_chars(PY_WHITESPACE).str.len_chars())
            .list.min()
            .fill_null(0)
            .alias("_min_k"),
            pl.col("candidates")
            .list.eval(e.field("content").str.len_chars())
            .list.max()
            .fill_null(0)
            .alias("_max_k"),
            (~pl.col("candidates").list.eval(e.field("grade").is_null()).list.any().fill_null(False)).alias(
                "grades_present"
            ),
        ]
    return exprs


#: A role sequence that ``validate.role_order_problem`` accepts (letters from _ROLE_LETTER).
_ROLE_OK = r"^S?U[UAT]*$"


def derive_frame(kind: Kind, frame: pl.DataFrame) -> pl.DataFrame:
    """The scalar columns ``validate.derive`` computes, for a frame that has the stat columns (``derive_columns``).

    ``role_order`` is "ok" or "?" (the detail of a bad order is filled in later for those rows only).
    """
    if kind == "sft":
        roles = pl.col("_roles_m")
        ok = roles.str.contains(_ROLE_OK) & ~roles.str.contains("UT") & roles.str.ends_with("A")
        cols = [
            pl.col("_min_m").alias("min_turn_chars"),
            pl.col("_chars_m").alias("total_chars"),
            pl.col("messages").list.len().alias("n_turns"),
        ]
    else:
        roles = pl.col("_roles_p")
        ok = roles.str.contains(_ROLE_OK) & ~roles.str.contains("UT") & roles.str.contains("[UT]$")
        if kind == "pair":
            ok = ok & pl.col("_roles_c").str.contains("^[AT]*$") & pl.col("_roles_r").str.contains("^[AT]*$")
            cols = [
                pl.min_horizontal("_min_p", "_min_c", "_min_r").alias("min_turn_chars"),
                (pl.col("_chars_p") + pl.max_horizontal("_chars_c", "_chars_r")).alias("total_chars"),
                _responses_differ(frame),
            ]
        else:
            cols = [
                pl.min_horizontal("_min_p", "_min_k").alias("min_turn_chars"),
                (pl.col("_chars_p") + pl.col("_max_k")).alias("total_chars"),
                pl.col("n_candidates"),
                pl.col("grades_present"),
                _candidates_agree(frame),
            ]
    # Int64 columns keep GX's range checks vectorised (other integer types fall back to a Python loop)
    return frame.select(
        pl.col("id"),
        pl.when(ok).then(pl.lit("ok")).otherwise(pl.lit("?")).alias("role_order"),
        *[c.cast(pl.Int64) if c.meta.output_name() in _COUNTS else c for c in cols],
    )


_COUNTS = ("min_turn_chars", "total_chars", "n_turns", "n_candidates")


#: Characters that ``validate.text_key`` drops or may merge or split (spaces, zero-width characters,
#: combining marks, Hangul letters, which NFC composes). Two texts with the same key have as many of the
#: others ("visible" ones). Counting these (rare) characters is twice as fast as counting the others.
_HIDDEN = f"[{PY_WHITESPACE}{INVISIBLE}\\p{{M}}\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff]"


def _visible(texts: pl.Expr) -> pl.Expr:
    """The number of characters of each text that ``validate.text_key`` keeps as they are."""
    return texts.str.len_chars() - texts.str.count_matches(_HIDDEN)


def _turns_visible(column: str) -> pl.Expr:
    """Per row: ``_visible`` of each turn of ``column``, as a list."""
    return pl.col(column).list.eval(_visible(pl.element().struct.field("content")))


def _responses_differ(frame: pl.DataFrame) -> pl.Expr:
    """``validate.messages_key(chosen) != messages_key(rejected)`` as a literal column. The keys are
    compared only where the roles and the visible characters of each turn agree (a few rows in a thousand):
    normalising every response costs 20x more."""
    alike = (pl.col("_roles_c") == pl.col("_roles_r")) & (
        _turns_visible("chosen") == _turns_visible("rejected")
    )
    maybe = frame.select(alike.fill_null(True)).to_series()
    differ = ~maybe
    if maybe.any():
        some = frame.filter(maybe).select("chosen", "rejected").rows()
        equal = pl.Series([messages_key(c) == messages_key(r) for c, r in some])
        differ = differ.scatter(maybe.arg_true(), ~equal)
    return pl.lit(differ).alias("responses_differ")


def _candidates_agree(frame: pl.DataFrame) -> pl.Expr:
    """``validate.candidates_agree`` as a literal column, computed only for the rankings where two
    candidates have as many visible characters."""
    counts = _turns_visible("candidates")
    maybe = frame.select((counts.list.n_unique() < counts.list.len()).fill_null(True)).to_series()
    agree = ~maybe
    if maybe.any():
        some = frame.filter(maybe).get_column("candidates").to_list()
        agree = agree.scatter(maybe.arg_true(), pl.Series([candidates_agree(c) for c in some]))
    return pl.lit(agree).alias("candidates_agree")
