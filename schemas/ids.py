"""Stable content ids.

An id is the 128-bit XXH3 hash (hex, 32 characters) of a canonical byte
serialisation of the record's *content* (kind, messages, responses,
candidates and grades); provenance (file, row, run, source name) is not part
of it, so the same content read from two files is recognised as one record.
XXH3 is a fixed, published algorithm: the id is the same on every machine,
Python version and run. The serialisation uses ASCII control separators, which
cannot be confused with text because every field is length-prefixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import xxhash

Message = Mapping[str, str]


def _put(parts: list[str], text: str) -> None:
    parts.append(str(len(text)))
    parts.append(":")
    parts.append(text)


def _messages(parts: list[str], tag: str, messages: Iterable[Message]) -> None:
    parts.append(tag)
    for m in messages:
        _put(parts, m["role"])
        _put(parts, m["content"])
    parts.append("\x1e")


def content_key(kind: str, record: Mapping) -> str:
    """The canonical serialisation that the id hashes (exposed for tests and debugging)."""
    parts: list[str] = [kind, "\x1d"]
    if kind == "sft":
        _messages(parts, "m", record["messages"])
    elif kind == "pair":
        _messages(parts, "p", record["prompt"])
        _messages(parts, "c", record["chosen"])
        _messages(parts, "r", record["rejected"])
    elif kind == "ranking":
        _messages(parts, "p", record["prompt"])
        for cand in record["candidates"]:
            parts.append("k")
            _put(parts, cand["content"])
            grade = cand.get("grade")
            if grade is None:
                raise ValueError("ranking candidate without a grade")
            _put(parts, str(int(grade)))
            parts.append("1" if cand.get("is_reference") else "0")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return "".join(parts)


def record_id(kind: str, record: Mapping) -> str:
    """Stable id of a canonical record: xxh3-128 of ``content_key``."""
    return xxhash.xxh3_128_hexdigest(content_key(kind, record).encode("utf-8", "surrogatepass"))


def text_id(*texts: str) -> str:
    """Stable id of a tuple of strings (used for prompt hashes and split keys)."""
    parts: list[str] = []
    for t in texts:
        _put(parts, t)
    return xxhash.xxh3_128_hexdigest("".join(parts).encode("utf-8", "surrogatepass"))


def prompt_text(messages: Sequence[Message]) -> str:
    """A flat rendering of a prompt, for hashing, shingling and display."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
