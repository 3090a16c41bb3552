"""The column-at-a-time ingest paths compute exactly what the per-record definitions compute."""

from __future__ import annotations

import contextlib
import gzip

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.ingest.columnar import (
    PY_WHITESPACE,
    IdSet,
    content_key_expr,
    derive_columns,
    derive_frame,
    digests_from_hex,
    first_occurrence,
    hex_ids,
    xxh3_digests,
)
from curation.ingest.readers import BY_NAME
from curation.ingest.readers.alpaca import AlpacaReader
from curation.ingest.readers.base import RowError, meta_json
from curation.ingest.readers.hh import HHReader
from curation.ingest.readers.messages import MessagesReader
from curation.ingest.readers.sharegpt import ShareGPTReader
from curation.ingest.readers.sharegpt_pair import ShareGPTPairReader
from curation.ingest.readers.trl import TRLPreferenceReader
from curation.ingest.validate import derive
from schemas import SCHEMAS
from schemas.ids import record_id
from tests.fixtures.inputs import real_conversations

WS = " \t\n\x1c\x1f\u3000\u2028\xa0\x85"
text = st.text(alphabet=st.sampled_from(list("ab é中😀") + list(WS)), max_size=12)
role = st.sampled_from(["system", "user", "assistant", "tool", "narrateur é"])  # and one no reader gives
messages = st.lists(st.fixed_dictionaries({"role": role, "content": text}), max_size=5)
candidate = st.fixed_dictionaries(
    {
        "content": text,
        "grade": st.integers(-3, 5),  # readers always give a grade (record_id needs one)
        "is_reference": st.booleans(),
        "meta": st.just("{}"),
    }
)
RECORDS = {
    "sft": st.fixed_dictionaries({"messages": messages}),
    "pair": st.fixed_dictionaries({"prompt": messages, "chosen": messages, "rejected": messages}),
    "ranking": st.fixed_dictionaries({"prompt": messages, "candidates": st.lists(candidate, max_size=4)}),
}


def frame_of(kind: str, records: list[dict]) -> pl.DataFrame:
    schema = SCHEMAS[kind]
    names = [n for n in schema.names if n in records[0]]
    table = pa.Table.from_pylist(records, schema=pa.schema([schema.field(n) for n in names]))
    return pl.from_arrow(table)


def check(kind: str, records: list[dict]) -> None:
    frame = frame_of(kind, records).with_columns(derive_columns(kind))
    digests = xxh3_digests(frame.select(content_key_expr(kind)).to_series())
    ids = hex_ids(digests).to_pylist()
    want_ids = [record_id(kind, r) for r in records]
    assert ids == want_ids
    frame = frame.with_columns(pl.Series("id", ids))
    got = derive_frame(kind, frame).to_pandas()
    want = derive(kind, [{**r, "id": i} for r, i in zip(records, ids, strict=True)])
    for col in got.columns:
        if col == "role_order":
            assert ((got[col] == "ok") == (want[col] == "ok")).all()
        else:
            assert got[col].tolist() == want[col].tolist(), col


@settings(max_examples=60, deadline=None)
@given(st.lists(RECORDS["sft"], min_size=1, max_size=6))
def test_sft_matches_python(records):
    check("sft", records)


@settings(max_examples=60, deadline=None)
@given(st.lists(RECORDS["pair"], min_size=1, max_size=6))
def test_pair_matches_python(records):
    check("pair", records)


@settings(max_examples=60, deadline=None)
@given(st.lists(RECORDS["ranking"], min_size=1, max_size=6))
def test_ranking_matches_python(records):
    check("ranking", records)


def test_whitespace_table_matches_interpreter():
    interpreter = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
    assert interpreter == PY_WHITESPACE


def test_id_set_and_hex_roundtrip():
    rng = np.random.default_rng(0)
    d = np.frombuffer(rng.bytes(16 * 1000), dtype="S16")
    assert [x.hex() for x in d[:5]] == hex_ids(d[:5]).to_pylist()
    assert (digests_from_hex(hex_ids(d)) == d).all()
    s = IdSet()
    for chunk in np.array_split(d[:600], 30):  # runs of equal size: merged as they come
        s.add(chunk)
    hit = s.contains(d)
    assert hit[:600].all() and not hit[600:].any() and len(s) == 600
    # ids that share their first 8 bytes (the binary-search key) with a stored id but differ after it
    raw = d[:50].view(np.uint8).reshape(-1, 16).copy()
    raw[:, 8:] ^= 0xFF
    twins = raw.reshape(-1).view("S16")
    assert not s.contains(twins).any()
    s.add(twins[:25])
    hit = s.contains(np.concatenate([twins, d[:50]]))
    assert hit[:25].all() and not hit[25:50].any() and hit[50:].all()
    assert first_occurrence(np.concatenate([d[:3], d[:2]])).tolist() == [True, True, True, False, False]


# digests from a tiny alphabet, so that many share their first 8 bytes (the binary-search key) and repeat
digest = st.tuples(
    st.sampled_from([b"\x00" * 8, b"\x01" * 8, b"\xff" * 8]),
    st.integers(0, 3),
    st.binary(min_size=7, max_size=7),
).map(lambda t: t[0] + bytes([t[1]]) + t[2])


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(digest, max_size=12), max_size=8), queries=st.lists(digest, max_size=20))
def test_id_set_and_first_occurrence_agree_with_python_sets(batches, queries):
    s, ref = IdSet(), set()
    for b in batches:
        arr = np.array(b, dtype="S16")
        known = s.contains(arr)
        assert known.tolist() == [x in ref for x in b]
        first = first_occurrence(arr)
        assert first.tolist() == [x not in b[:i] for i, x in enumerate(b)]
        s.add(arr[first & ~known])  # as ingest adds what it accepts
        ref.update(b)
    assert s.contains(np.array(queries, dtype="S16")).tolist() == [q in ref for q in queries]
    assert len(s) == len(ref)


marker = st.sampled_from(
    ["\n\nHuman: ", "\n\nAssistant: ", "\n\nHuman:", "\n\nAssistant:", "\n\n", "\x00", " "]
)
hh_text = st.lists(st.one_of(marker, st.text(alphabet="ab \n", max_size=6)), max_size=10).map("".join)


def _columnar_rows_equal_convert(reader, values: list[dict]) -> list[int]:
    """Every row is taken by ``take_rows`` or left to the row path (the returned positions), each
    row it takes is exactly the record ``convert`` gives, and each row it leaves ``convert`` handles
    (records or a RowError, never another exception)."""
    fast, rest = reader.take_rows(values)
    done = set() if fast is None else set(fast.get_column("_i").to_list())
    assert done | set(rest) == set(range(len(values))) and not done & set(rest)
    for row in [] if fast is None else fast.iter_rows(named=True):
        (want,) = reader.convert(values[row["_i"]])
        assert set(row) == {"_i", *want}
        assert {k: row[k] for k in want if k != "meta"} == {k: v for k, v in want.items() if k != "meta"}
        assert orjson.loads(row["meta"]) == want["meta"]
    for i in rest:
        with contextlib.suppress(RowError):
            reader.convert(values[i])
    return rest


def _arrow_rows_equal_columns(
    reader, values: list[dict], plain=None, schema: pa.Schema | None = None
) -> None:
    """The Arrow form (``schema``, by default the reader's first layout) of the rows of exactly its
    fields (by default strings; else those ``plain`` accepts) gives what the list form gives."""
    schema = schema or reader.layouts[0]
    fields = set(schema.names)
    keep = plain or (lambda v: set(v) == fields and all(isinstance(x, str) for x in v.values()))
    rows = [v for v in values if keep(v)]
    if rows:
        table = pa.Table.from_pylist(rows, schema=schema)
        a_fast, a_rest = reader.take_table(table, None)
        l_fast, l_rest = reader.take_rows(rows)
        assert a_rest == l_rest and a_fast.to_dicts() == (l_fast.to_dicts() if l_fast is not None else [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(hh_text, hh_text, st.sampled_from(["same", "same", "changed", "none", "null", "id"])),
        min_size=1,
        max_size=8,
    )
)
def test_hh_columnar_equals_convert(rows):
    """Fuzzed transcripts: the vectorised rows are exactly what convert gives; the others go row by row.
    The rejected transcript shares the chosen one's beginning, has it with one letter changed, or not, or
    is null; or the row has an id (its meta)."""
    values = []
    for c, r, share in rows:
        prefix = {"same": "\n\nHuman: q" + c, "changed": "\n\nHuman: z" + c}.get(share, "")
        values.append({"chosen": "\n\nHuman: q" + c, "rejected": None if share == "null" else prefix + r})
        if share == "id":  # a field the reader does not read: meta
            values[-1] = {"id": c, "rejected": "\n\nHuman: q" + c + r, "chosen": values[-1]["chosen"]}
    reader = HHReader()
    _columnar_rows_equal_convert(reader, values)


blank = st.text(alphabet=st.sampled_from(list(WS)), min_size=1, max_size=3)  # empty after str.strip()
trl_value = st.one_of(
    text, text, text, blank, st.none(), st.integers(0, 9), st.lists(st.just({"role": "user", "content": "x"}))
)
rarely = st.sampled_from([False, False, False, True])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(trl_value, trl_value, trl_value, rarely, rarely), min_size=1, max_size=8))
def test_trl_columnar_equals_convert(rows):
    """TRL rows of three strings (blank ones included): the vectorised rows are exactly what convert gives;
    rows with another type, a missing field or an extra field go row by row, as do blank texts."""
    values = []
    for p, c, r, drop_prompt, extra in rows:
        v = (
            {"chosen": c, "rejected": r}
            | ({} if drop_prompt else {"prompt": p})
            | ({"x": 1} if extra else {})
        )
        values.append(v)
    reader = TRLPreferenceReader()
    rest = _columnar_rows_equal_convert(reader, values)
    for i in rest:  # rows of three strings the columns leave have a blank text: the row path says so
        v = values[i]
        if len(v) == 3 and all(isinstance(v.get(f), str) for f in ("prompt", "chosen", "rejected")):
            with pytest.raises(RowError, match="empty text"):
                reader.convert(v)
    _arrow_rows_equal_columns(reader, values)


alpaca_value = st.one_of(text, text, text, blank, st.just(""), st.none(), st.integers(0, 9))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(alpaca_value, alpaca_value, alpaca_value, rarely, rarely), min_size=1, max_size=8))
def test_alpaca_columnar_equals_convert(rows):
    """Alpaca rows of {instruction, input, output} strings (empty input, blank texts): the vectorised rows
    are exactly what convert gives; a missing input, another type or an extra field goes row by row."""
    values = [
        {"instruction": i, "output": o}
        | ({} if no_input else {"input": x})
        | ({"system": "s"} if extra else {})
        for i, x, o, no_input, extra in rows
    ]
    reader = AlpacaReader()
    _columnar_rows_equal_convert(reader, values)
    _arrow_rows_equal_columns(reader, values)
    # Arrow makes a missing or null input null: the columns read it as no input, as convert does
    no_input = [{"instruction": v["instruction"], "output": v["output"]} for v in values]
    if all(isinstance(v["instruction"], str) and isinstance(v["output"], str) for v in no_input):
        fast, rest = reader.take_table(pa.Table.from_pylist(no_input, schema=reader.layouts[0]), None)
        for row in fast.iter_rows(named=True):
            assert row["messages"] == reader.convert(no_input[row["_i"]])[0]["messages"]


def test_hh_columnar_on_real_file(shared_data):
    with gzip.open(shared_data / "hh-rlhf/harmless-base-test.jsonl.gz") as fh:
        values = [orjson.loads(x) for x in fh]
    reader = HHReader()
    fast, rest = reader.take_rows(values)
    assert fast.height + len(rest) == len(values) and fast.height > 0.99 * len(values)
    for row in fast.iter_rows(named=True):
        (want,) = reader.convert(values[row["_i"]])
        assert (row["prompt"], row["chosen"], row["rejected"]) == (
            want["prompt"],
            want["chosen"],
            want["rejected"],
        )


known_role = st.sampled_from(
    ["user", "assistant", "system", "tool", "User", " GPT ", "human", "bot", "function_call", "observation"]
    + ["developer", "Assistant\u3000", "assistant"]
)
odd_role = st.sampled_from(["wizard", "", "assistant\x1c", "\u0130"])  # unknown once stripped and lowered
some_text = st.tuples(st.sampled_from(list("abé中")), text).map("".join)
plain_turn = st.fixed_dictionaries({"role": known_role, "content": some_text})
defect = st.one_of(
    st.fixed_dictionaries({"role": odd_role, "content": some_text}),
    st.fixed_dictionaries({"role": known_role, "content": st.one_of(blank, st.none())}),
    st.fixed_dictionaries({"role": known_role, "content": st.just([{"type": "text", "text": "x"}])}),
    st.fixed_dictionaries({"role": known_role, "content": some_text, "name": st.just("n")}),
    st.none(),
)
reply = st.fixed_dictionaries(
    {"role": st.sampled_from(["assistant", "gpt", " Bot", "model"]), "content": some_text}
)
conversation = st.tuples(
    st.lists(plain_turn, max_size=4),
    st.one_of(reply, reply, plain_turn),
    st.lists(st.tuples(st.integers(0, 5), defect), max_size=1),
).map(
    lambda t: (
        [*t[0], t[1]]
        if not t[2]
        else [*t[0], t[1]][: t[2][0][0]] + [t[2][0][1]] + [*t[0], t[1]][t[2][0][0] :]
    )
)


def _plain_turn(t: object, keys: tuple[str, str] = ("role", "content")) -> bool:
    """A turn of exactly ``keys``, both strings (what the Arrow schemas of the chat readers take)."""
    return isinstance(t, dict) and set(t) == set(keys) and all(type(x) is str for x in t.values())


def _plain_messages(v: dict) -> bool:
    return set(v) == {"messages"} and all(_plain_turn(t) for t in v["messages"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(conversation, rarely), min_size=1, max_size=8))
def test_messages_columnar_equals_convert(rows):
    """OpenAI messages (role spellings, blank or null contents, parts, extra fields, null turns, empty
    conversations): the vectorised rows are exactly what convert gives; the others go row by row."""
    values = [{"messages": turns} | ({"id": 1} if extra else {}) for turns, extra in rows]
    reader = MessagesReader()
    _columnar_rows_equal_convert(reader, values)
    _arrow_rows_equal_columns(reader, values, _plain_messages)
    # Arrow also gives rows with null turns, roles or contents: the columns leave them to the row path
    nullable = [
        v
        for v in values
        if set(v) == {"messages"}
        and all(t is None or ("name" not in t and not isinstance(t["content"], list)) for t in v["messages"])
    ]
    if nullable:
        fast, rest = reader.take_table(pa.Table.from_pylist(nullable, schema=reader.layouts[0]), None)
        for row in fast.iter_rows(named=True):
            assert row["messages"] == reader.convert(nullable[row["_i"]])[0]["messages"]
        for i in rest:
            with pytest.raises(RowError):
                reader.convert(nullable[i])


def test_messages_columnar_on_real_conversations(shared_data):
    values = real_conversations(shared_data)
    reader = MessagesReader()
    rest = _columnar_rows_equal_convert(reader, values)
    assert len(values) > 500 and len(rest) <= 0.02 * len(values)
    for i in rest:  # what the columns leave, the row path quarantines
        with pytest.raises(RowError):
            reader.convert(values[i])


def _sharegpt(turns: list) -> list:
    return [
        t
        if not isinstance(t, dict)
        else {("from" if k == "role" else "value" if k == "content" else k): v for k, v in t.items()}
        for t in turns
    ]


system_prompt = st.one_of(st.none(), some_text, blank, st.integers(0, 3), st.just(None))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(conversation, system_prompt, rarely), min_size=1, max_size=8))
def test_sharegpt_columnar_equals_convert(rows):
    """ShareGPT conversations ({from, value} turns) with or without a system prompt (blank, null, a
    number; prepended only when the first turn is not a system turn, before the ending is checked)."""
    values = []
    for turns, system, extra in rows:
        v = {"conversations": _sharegpt(turns)}
        if system is not None or extra:
            v["system"] = system
        values.append(v | ({"tools": "[]"} if extra and system is None else {}))
    reader = ShareGPTReader()
    _columnar_rows_equal_convert(reader, values)

    def plain(v):
        return (
            v.keys() <= {"conversations", "system"}
            and all(_plain_turn(t, ("from", "value")) for t in v["conversations"])
            and (v.get("system") is None or type(v["system"]) is str)
        )

    _arrow_rows_equal_columns(reader, values, plain)


response = st.one_of(reply, reply, reply, plain_turn, defect, st.just([{"from": "gpt", "value": "listed"}]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(conversation, response, response, system_prompt, rarely), min_size=1, max_size=8))
def test_sharegpt_pair_columnar_equals_convert(rows):
    """ShareGPT pairs: conversations as above (a prompt may end with an assistant turn), responses from
    assistant or other roles, blank, null, with extra fields or given as lists, a system prompt or not,
    extra fields in the row: the vectorised rows are exactly what convert gives; the others go row by row."""
    values = []
    for turns, chosen, rejected, system, extra in rows:
        v = {"conversations": _sharegpt(turns[:-1] or turns), "chosen": chosen, "rejected": rejected}
        v = {
            k: (_sharegpt([x])[0] if k != "conversations" and not isinstance(x, list) else x)
            for k, x in v.items()
        }
        if system is not None:
            v["system"] = system
        values.append(v | ({"id": 7} if extra else {}))
    reader = ShareGPTPairReader()
    _columnar_rows_equal_convert(reader, values)

    def plain(v):
        return (
            v.keys() <= ShareGPTPairReader.reads
            and all(
                _plain_turn(t, ("from", "value")) for t in [*v["conversations"], v["chosen"], v["rejected"]]
            )
            and (v.get("system") is None or type(v["system"]) is str)
        )

    _arrow_rows_equal_columns(reader, values, plain)


@st.composite
def trl_message_row(draw) -> dict:
    """A TRL row in UltraFeedback's layout: a prompt, and responses that may repeat it as their first turn
    (in another spelling of the user role, with another text, or alone), with odd roles, blank, null or
    listed contents, a ``messages`` list or not, and now and then a field the reader does not read."""
    prompt = draw(st.one_of(some_text, some_text, some_text, blank, st.none(), st.integers(0, 3)))
    same = prompt if isinstance(prompt, str) else "q"
    head = st.sampled_from(
        [[], [], [{"role": "user", "content": same}], [{"role": " Human", "content": same}]]
    )
    not_prompt = st.sampled_from(
        [[{"role": "user", "content": same + " "}], [{"role": "gpt", "content": same}]]
    )
    head = st.one_of(head, not_prompt)
    row = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        repeat = draw(head)
        rest = draw(st.sampled_from([[], [None]])) if draw(rarely) else draw(conversation)[-2:]
        row[side] = repeat + [t for t in rest if t is not None] if draw(st.booleans()) else repeat + rest
    if draw(st.booleans()):
        row["messages"] = draw(st.one_of(st.just(row["chosen"]), st.lists(plain_turn, max_size=2), st.none()))
    if draw(rarely):
        row["score_chosen"] = 8.5
    return row


@settings(max_examples=300, deadline=None)
@given(st.lists(trl_message_row(), min_size=1, max_size=8))
def test_trl_message_pairs_columnar_equals_convert(values):
    """TRL pairs as a prompt and message lists: the vectorised rows are exactly what convert gives (the
    turns after a prompt both responses repeat, the whole lists otherwise); the others go row by row."""
    reader = TRLPreferenceReader()
    _columnar_rows_equal_convert(reader, values)

    def plain(v):
        turns = [*v["chosen"], *v["rejected"], *(v.get("messages") or [])]
        return v.keys() <= reader.reads and type(v["prompt"]) is str and all(_plain_turn(t) for t in turns)

    _arrow_rows_equal_columns(reader, values, plain, TRLPreferenceReader.layouts[1])


def _real_rows(shared_data, name: str) -> list[dict]:
    """Clean real rows of each columnar reader's format: the files as they are, and for TRL (no TRL file
    here) LLaMA-Factory's DPO demo in both TRL layouts, with an id kept in meta."""
    lf = shared_data / "llama-factory"
    if name == "hh":
        with gzip.open(shared_data / "hh-rlhf/harmless-base-test.jsonl.gz") as fh:
            return [orjson.loads(x) for x in fh]
    if name == "messages":  # kto's boolean label and the joined v1 demo: other fields go to meta
        return orjson.loads((lf / "kto_en_demo.json").read_bytes()) + real_conversations(shared_data)
    files = {
        "alpaca": "alpaca_en_demo",
        "sharegpt": "glaive_toolcall_en_demo",
        "sharegpt_pair": "dpo_en_demo",
    }
    if name in files:
        return orjson.loads((lf / f"{files[name]}.json").read_bytes())
    dpo = orjson.loads((lf / "dpo_en_demo.json").read_bytes())
    strings = [
        {"prompt": r["conversations"][-1]["value"], "chosen": r["chosen"]["value"], "id": k}
        | {"rejected": r["rejected"]["value"]}
        for k, r in enumerate(dpo)
    ]
    turns = [
        r
        | {
            s: [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[s]}]
            for s in ("chosen", "rejected")
        }
        for r in strings
    ]
    return strings + turns


@pytest.mark.parametrize("name", ["hh", "alpaca", "messages", "sharegpt", "sharegpt_pair", "trl"])
def test_columnar_takes_most_clean_real_rows(shared_data, name):
    """At least 90 % of the rows of clean real data go through the reader's columnar function (rows with
    fields it does not read, like an id, a label or a tools list, included: those go to meta), and each
    record it makes is the one ``convert`` makes, meta included; the Arrow form of the rows that fit gives
    the same records."""
    reader = BY_NAME[name]()
    values = _real_rows(shared_data, name)
    through = []
    columnar = reader.columnar

    def spy(frame):
        fast, slow = columnar(frame)
        through.append(fast.height)
        return fast, slow

    reader.columnar = spy
    rest = _columnar_rows_equal_convert(reader, values)
    assert len(values) >= 300 and sum(through) == len(values) - len(rest) >= 0.9 * len(values)
    for layout in reader.layouts:  # the Arrow path: the same rows, the same records
        fit = [i for i, v in enumerate(values) if reader.fits()(v) is layout]
        if not fit:
            continue
        rows = [values[i] for i in fit]
        meta = [meta_json({k: x for k, x in v.items() if k not in reader.reads}) for v in rows]
        a_fast, a_rest = reader.take_table(pa.Table.from_pylist(rows, schema=layout), meta)
        l_fast, l_rest = reader.take_rows(rows)
        assert a_rest == l_rest and a_fast.to_dicts() == l_fast.to_dicts()
