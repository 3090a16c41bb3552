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
