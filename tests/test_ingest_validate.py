"""The Great Expectations validator: the garbage-collector pause around its import and set-up."""

from __future__ import annotations

import gc
import threading

import pytest

from curation.ingest.validate import Validator, _gc_paused


def test_gc_pause_nests_restores_and_respects_a_disabled_collector():
    assert gc.isenabled()
    with _gc_paused():
        assert not gc.isenabled()
        with _gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause is still on
    assert gc.isenabled()

    with pytest.raises(RuntimeError), _gc_paused():
        raise RuntimeError("set-up failed")
    assert gc.isenabled()  # an error turns it back on too

    gc.disable()
    try:
        with _gc_paused():
            pass
        assert not gc.isenabled()  # off before, so left off
    finally:
        gc.enable()


def test_gc_pause_across_threads_ends_with_the_last_one():
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with _gc_paused():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(10)
    with _gc_paused():
        release.set()
        thread.join(10)
        assert not gc.isenabled()  # the other thread left, this pause still holds
    assert gc.isenabled()


def test_validator_builds_with_the_collector_back_on():
    validator = Validator("pair")
    assert gc.isenabled()
    assert [c.column for c in validator.checks][:4] == ["min_turn_chars", "role_order", "total_chars", "id"]


def test_validator_finds_each_bad_record_of_real_pairs_and_keeps_no_results(shared_data):
    """Real HH-RLHF pairs with three spoiled records: the suite names exactly those, with the first check
    each fails, and running it batch after batch leaves nothing behind in the GX context."""
    import gzip
    import json

    from curation.ingest.readers.hh import HHReader
    from curation.ingest.validate import derive

    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(300), fh, strict=False)]
    records = [rec for row in rows for rec in HHReader().convert(row)]
    records = [
        r for r in records if all(m["content"].strip() for m in r["prompt"] + r["chosen"] + r["rejected"])
    ]
    records[10] = {**records[10], "rejected": records[10]["chosen"]}
    records[20] = {**records[20], "chosen": [{"role": "assistant", "content": "   "}]}
    records[30] = {**records[30], "prompt": [{"role": "assistant", "content": "hello"}]}
    for i, r in enumerate(records):
        r["id"] = f"id{i}"

    validator = Validator("pair")
    frame = derive("pair", records)
    for _ in range(3):
        failing = validator.failing_checks(frame)
        assert {i: chk.reason for i, chk in failing.items()} == {
            10: "chosen == rejected",
            20: "empty turn",
            30: "role order",
        }
    assert validator.context.validation_results_store.list_keys() == []
