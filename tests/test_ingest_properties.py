"""Property tests: the HH transcript splitter and content-id stability."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from curation.ingest.readers.base import RowError
from curation.ingest.readers.hh import HHReader, split_transcript
from schemas.ids import content_key, record_id, text_id

# Turn text that cannot itself contain a turn marker.
turn_text = st.text(alphabet=string.printable + "éü中😀\u2028", max_size=40).filter(
    lambda t: "\n\nHuman:" not in t and "\n\nAssistant:" not in t and not t.startswith(" ")
)
roles = st.sampled_from(["user", "assistant"])
turns = st.lists(st.tuples(roles, turn_text), min_size=1, max_size=8)
MARK = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: "}


def render(ts: list[tuple[str, str]]) -> str:
    return "".join(MARK[r] + c for r, c in ts)


@given(turns)
def test_split_roundtrip(ts):
    # markers at a turn's end (text ending in "\n\nHuman:" fragments) are excluded by the filter
    got = split_transcript(render(ts))
    assert [(m["role"], m["content"]) for m in got] == ts


@given(turns, st.text(alphabet=" \t\n", max_size=3))
def test_split_ignores_blank_head_and_keeps_content_verbatim(ts, head):
    got = split_transcript(head + render(ts))
    assert "".join(MARK[m["role"]] + m["content"] for m in got) == render(ts)


@given(st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "\n\nHuman:" not in t))
def test_text_before_first_marker_is_an_error(head):
    try:
        split_transcript(head + "\n\nHuman: hi\n\nAssistant: yo")
    except RowError as exc:
        assert "before the first" in exc.reason
    else:
        raise AssertionError("accepted text before the first marker")


@given(turns.filter(lambda ts: ts[-1][0] == "user"), turn_text, turn_text)
def test_hh_pair_prompt_is_shared_prefix(prefix, a, b):
    row = {
        "chosen": render(prefix) + MARK["assistant"] + a,
        "rejected": render(prefix) + MARK["assistant"] + b,
    }
    (rec,) = HHReader().convert(row)
    assert [(m["role"], m["content"]) for m in rec["prompt"]] == prefix
    if a != b:
        assert rec["chosen"] == [{"role": "assistant", "content": a}]
        assert rec["rejected"] == [{"role": "assistant", "content": b}]


messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": st.text(max_size=20)}
    ),
    max_size=5,
)


@given(messages, messages, messages)
@settings(max_examples=200)
def test_record_id_is_injective_on_content(p, c, r):
    a = {"prompt": p, "chosen": c, "rejected": r}
    b = {"prompt": p + c, "chosen": [], "rejected": r}  # moving turns between fields changes the id
    if c:
        assert record_id("pair", a) != record_id("pair", b)
    # provenance is not part of the id
    assert record_id("pair", {**a, "source": "x", "meta": {"k": 1}}) == record_id("pair", a)
    # the id is a pure function of the canonical serialisation
    assert record_id("pair", dict(a)) == record_id("pair", a) and len(record_id("pair", a)) == 32
    assert content_key("pair", a) != content_key("sft", {"messages": p})


@given(st.lists(st.text(max_size=10), max_size=4), st.lists(st.text(max_size=10), max_size=4))
def test_text_id_length_prefixing(xs, ys):
    if xs != ys:
        assert text_id(*xs) != text_id(*ys)


def test_ids_are_pinned():
    """Known values: the same content gives the same id on every machine and release."""
    rec = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    assert (
        content_key("pair", rec)
        == "pair\x1dp4:user2:Hi\x1ec9:assistant6:Hello!\x1er9:assistant8:Go away.\x1e"
    )
    assert record_id("pair", rec) == PINNED_PAIR
    assert text_id("a", "b") == PINNED_TEXT


PINNED_PAIR = "cce8e5760a9b92e79d9cf746833b2a03"
PINNED_TEXT = "6d9c4da24648e62c97910860d0177cd9"
