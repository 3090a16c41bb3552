"""Formats without a file of their own in ../shared/data, derived from the real files: the same content read
through another format must give the same canonical records and ids."""

from __future__ import annotations

import gzip
import json

import pytest

from curation.ingest.readers import BY_NAME, detect
from curation.ingest.readers.base import RowError
from schemas.ids import record_id

TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _hh(shared_data, n=200):
    with gzip.open(shared_data / "hh-rlhf/harmless-base-test.jsonl.gz", "rt") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


def _records(reader_name, rows):
    reader = BY_NAME[reader_name]()
    return [rec for row in rows for rec in reader.convert(row)]


def test_trl_strings_messages_and_implicit_prompt_match_hh(shared_data):
    hh = [r for r in _records("hh", _hh(shared_data)) if len(r["prompt"]) == 1]
    assert len(hh) > 20
    ids = [record_id("pair", r) for r in hh]
    explicit_str = [
        {
            "prompt": r["prompt"][0]["content"],
            "chosen": r["chosen"][0]["content"],
            "rejected": r["rejected"][0]["content"],
        }
        for r in hh
    ]
    explicit_msgs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in hh]
    implicit = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in hh]
    # HuggingFaceH4/ultrafeedback_binarized: a prompt, and whole conversations that repeat it
    h4 = [
        {"prompt": r["prompt"][0]["content"], "prompt_id": str(i), "score_chosen": 8.0, **x}
        for i, (r, x) in enumerate(zip(hh, implicit, strict=True))
    ]
    h4_msgs = [{"prompt": r["prompt"], **x} for r, x in zip(hh, implicit, strict=True)]
    for rows in (explicit_str, explicit_msgs, implicit, h4, h4_msgs):
        assert detect(rows, "t").name == "trl"
        assert [record_id("pair", r) for r in _records("trl", rows)] == ids
    assert _records("trl", h4[:1])[0]["meta"] == {"prompt_id": "0", "score_chosen": 8.0}


def test_trl_whole_conversations_need_a_response_after_the_prompt():
    user, answer = {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}
    with pytest.raises(RowError) as exc:
        _records("trl", [{"prompt": "2+2?", "chosen": [user, answer], "rejected": [user]}])
    assert (exc.value.field, exc.value.reason) == ("rejected", "no response after the prompt it repeats")
    # only one side repeats the prompt: taken as given (validation then finds a user turn in a response)
    (rec,) = _records("trl", [{"prompt": "2+2?", "chosen": [user, answer], "rejected": [answer]}])
    assert rec["chosen"] == [user, answer] and rec["rejected"] == [answer]


def test_openai_list_of_parts_and_sharegpt_roles_match_messages(shared_data):
    rows = [json.loads(x) for x in (shared_data / "llama-factory/v1_sft_demo.jsonl").open()][:100]
    base = _records("messages", rows)
    ids = [record_id("sft", r) for r in base]
    parts = [
        {
            "messages": [
                {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                for m in r["messages"]
            ]
        }
        for r in base
    ]
    assert [record_id("sft", r) for r in _records("messages", parts)] == ids
    sharegpt = []
    for r in base:
        msgs = r["messages"]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
        conv = [
            {"from": TO_SHAREGPT[m["role"]], "value": m["content"]} for m in msgs if m["role"] != "system"
        ]
        sharegpt.append({"conversations": conv, **({"system": system} if system else {})})
    assert detect(sharegpt, "t").name == "sharegpt"
    assert [record_id("sft", r) for r in _records("sharegpt", sharegpt)] == ids


def test_sharegpt_pair_and_alpaca_pair_match_alpaca_eval(shared_data):
    raw = json.loads((shared_data / "alpaca-eval/gpt-3.5-turbo-1106.annotations.json").read_text())[:100]
    raw = [x for x in raw if x["preference"] != 1.5]
    ae = _records("alpaca_eval", raw)
    ids = [record_id("pair", r) for r in ae]
    alpaca_pair = [
        {
            "instruction": r["prompt"][0]["content"],
            "input": "",
            "chosen": r["chosen"][0]["content"],
            "rejected": r["rejected"][0]["content"],
        }
        for r in ae
    ]
    assert detect(alpaca_pair, "t").name == "alpaca_pair"
    assert [record_id("pair", r) for r in _records("alpaca_pair", alpaca_pair)] == ids
    sg = [
        {
            "conversations": [{"from": "human", "value": r["prompt"][0]["content"]}],
            "chosen": {"from": "gpt", "value": r["chosen"][0]["content"]},
            "rejected": {"from": "gpt", "value": r["rejected"][0]["content"]},
        }
        for r in ae
    ]
    assert [record_id("pair", r) for r in _records("sharegpt_pair", sg)] == ids
    # the soft label survives as strength in [0.5, 1]
    assert all(0.5 < r["strength"] <= 1.0 for r in ae)


def test_completions_ties_stay_ties(shared_data):
    """UltraFeedback-like rated completions built from GSM8K solutions: equal ratings share a grade."""
    rows = [json.loads(x) for x in (shared_data / "gsm8k/example_model_solutions.jsonl").open()][:100]
    uf = [
        {
            "instruction": x["question"],
            "completions": [
                {"response": v["solution"], "rating": 1.0 if v["is_correct"] else 0.0}
                for v in x.values()
                if isinstance(v, dict)
            ],
        }
        for x in rows
    ]
    assert detect(uf, "t").name == "completions"
    for x, rec in zip(rows, _records("completions", uf), strict=True):
        correct = [v["is_correct"] for v in x.values() if isinstance(v, dict)]
        grades = [c["grade"] for c in rec["candidates"]]
        assert [g == max(grades) for g in grades] == correct or len(set(correct)) == 1
        assert len(set(grades)) == len(set(correct))  # all tied -> one grade, never an order


def test_readers_register_themselves_in_priority_order():
    """Every format module of the package registers its reader (the column mapping is chosen explicitly,
    never detected); detection tries them by priority, most specific first; a clash is refused."""
    import importlib
    import pkgutil

    import curation.ingest.readers as package
    from curation.ingest.readers import READERS, MappingReader, Reader
    from curation.ingest.readers.registry import register

    assert [r.name for r in READERS] == [
        *("hh", "alpaca_eval", "sharegpt_pair", "sharegpt", "oasst", "solutions", "completions"),
        *("alpaca_pair", "trl", "messages", "alpaca"),
    ]
    defined = {
        obj
        for m in pkgutil.iter_modules(package.__path__)
        for obj in vars(importlib.import_module(f"{package.__name__}.{m.name}")).values()
        if isinstance(obj, type) and issubclass(obj, Reader) and obj not in (Reader, MappingReader)
    }
    assert defined == set(READERS)

    class Again(Reader):
        name = "again"

    with pytest.raises(ValueError, match="clashes with 'hh'"):
        register(priority=110)(Again)
    with pytest.raises(ValueError, match="clashes with 'trl'"):
        register(priority=1)(BY_NAME["trl"])
