"""The threaded stages of ingest keep order, pass every error on, stop cleanly, and lose nothing."""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.core.store import Store
from curation.ingest import pipeline
from curation.ingest.overlap import Alongside, Behind, ahead, ordered_map
from curation.ingest.pipeline import IngestOptions, ingest_paths

HH = Path("hh-rlhf/harmless-base-test.jsonl.gz")


def _slow(items, delay=0.002):
    for x in items:
        time.sleep(delay * (x % 3))  # uneven work, so threads finish out of order
        yield x


@pytest.mark.parametrize("enabled", [True, False])
def test_ahead_and_ordered_map_keep_order(enabled):
    out = list(
        ordered_map(lambda x: x * x, ahead(_slow(range(50)), enabled=enabled), workers=3 if enabled else 1)
    )
    assert out == [x * x for x in range(50)]


def test_ahead_raises_the_producers_error_after_the_items_before_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad row 3")

    got = []
    with pytest.raises(ValueError, match="bad row 3"):
        for x in ahead(items()):
            got.append(x)
    assert got == [1, 2]


def test_ordered_map_raises_in_input_order():
    def fn(x):
        if x == 4:
            raise KeyError(x)
        time.sleep(0.01 if x < 4 else 0)
        return x

    got = []
    with pytest.raises(KeyError):
        for x in ordered_map(fn, iter(range(10)), workers=3):
            got.append(x)
    assert got == [0, 1, 2, 3]


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []
    closed = threading.Event()

    def items():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    gen = ahead(items(), depth=1)
    assert next(gen) == 0
    gen.close()
    assert closed.is_set() and len(produced) <= 3  # at most the queue's depth and the one in hand


@pytest.mark.parametrize("workers", [1, 2])
def test_closing_the_map_stops_the_threads_and_closes_the_source(workers):
    closed = threading.Event()

    def items():
        try:
            yield from range(1000)
        finally:
            closed.set()

    before = threading.active_count()
    source = ahead(items(), enabled=workers > 1)  # still referenced here: closing must not wait for GC
    gen = ordered_map(lambda x: x, source, workers=workers)
    assert next(gen) == 0
    gen.close()
    assert closed.is_set() and threading.active_count() == before


def test_behind_runs_in_order_and_raises_a_failed_call():
    done: list[int] = []
    behind = Behind()
    for i in range(5):
        behind.submit(lambda i=i: (time.sleep(0.005), done.append(i)))
    behind.wait()
    assert done == [0, 1, 2, 3, 4]
    behind.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        behind.submit(lambda: done.append(99))  # the previous call's error surfaces before the next runs
    assert 99 not in done
    behind.shutdown()


def test_alongside_runs_on_a_thread_raises_its_error_and_stops_when_cancelled():
    assert Alongside(lambda stop: threading.current_thread().name).result().startswith("ingest-alongside")
    assert Alongside(lambda stop: threading.current_thread().name, enabled=False).result() == "MainThread"
    with pytest.raises(KeyError):
        Alongside(lambda stop: {}["missing"]).result()
    steps: list[int] = []

    def long(stop: threading.Event) -> None:
        while not stop.is_set():
            steps.append(1)
            time.sleep(0.01)

    job = Alongside(long)
    deadline = time.monotonic() + 5
    while not steps and time.monotonic() < deadline:  # it started
        time.sleep(0.01)
    job.cancel()
    job.future.exception(timeout=5)  # it returned
    assert steps and job.future.done()


def test_hashing_alongside_gives_the_same_unit_and_sha256_and_a_rerun_skips(shared_data, tmp_path):
    """On several cores the file is hashed while it is ingested; the unit key and the recorded SHA-256
    are those of the serial path, a rerun of the same file skips it, and a changed file with the
    same name (hashed first, as a unit of its source exists) is a new unit."""
    src = shared_data / HH
    units = {}
    for overlap in (True, False):
        store = Store(tmp_path / f"store-{overlap}")
        (res,) = ingest_paths(store, [str(src)], IngestOptions(batch_rows=500, overlap=overlap))
        assert not res.skipped and res.unit
        run = pq.read_table(tmp_path / f"store-{overlap}" / "ingest" / res.unit / "run.parquet").to_pylist()[
            0
        ]
        assert run["file_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
        units[overlap] = res.unit
    assert units[True] == units[False]

    store = Store(tmp_path / "store-True")
    (again,) = ingest_paths(store, [str(src)], IngestOptions(batch_rows=500, overlap=True))
    assert again.skipped and again.unit == units[True] and again.accepted == res.accepted
    changed = tmp_path / "other" / src.name
    changed.parent.mkdir()
    with gzip.open(src, "rb") as fh:  # the same file with its last 300 rows cut off
        changed.write_bytes(gzip.compress(b"".join(fh.readlines()[:-300])))
    (new,) = ingest_paths(store, [str(changed)], IngestOptions(batch_rows=500, overlap=True))
    assert (
        new.source == again.source
        and new.unit != again.unit
        and not new.skipped
        and new.rows_read == again.rows_read - 300
        and new.duplicates > 2000  # its records are those of the first version: marked, not added
    )
    assert len(list((tmp_path / "store-True" / "ingest").iterdir())) == 2


def test_a_write_that_fails_commits_nothing_and_a_rerun_completes(shared_data, tmp_path, monkeypatch):
    """An error on the writer thread aborts the unit like one on the main thread: no unit folder, and
    the next run ingests the file in full."""
    src = shared_data / HH
    opts = IngestOptions(batch_rows=500, overlap=True)
    real = pipeline._Writers._write
    calls = {"n": 0}

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(self, *args)

    monkeypatch.setattr(pipeline._Writers, "_write", failing)
    store = Store(tmp_path / "store")
    with pytest.raises(Exception, match="disk full while ingesting .*nothing was committed"):
        ingest_paths(store, [str(src)], opts)
    assert not list((tmp_path / "store").glob("ingest/*/run.parquet"))
    deadline = time.monotonic() + 10  # the file hashing alongside was told to stop, and does
    while (
        any(t.name.startswith("ingest-alongside") for t in threading.enumerate())
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    assert not any(t.name.startswith("ingest-alongside") for t in threading.enumerate())
    monkeypatch.setattr(pipeline._Writers, "_write", real)
    (res,) = ingest_paths(store, [str(src)], opts)
    assert res.reconciles and not res.skipped and res.accepted > 2000
    (unit,) = (tmp_path / "store" / "ingest").iterdir()
    assert pq.read_metadata(unit / "pair.parquet").num_rows == res.accepted


def test_on_batch_reports_the_running_accounting(shared_data, tmp_path):
    seen: list[tuple[int, int]] = []
    (res,) = ingest_paths(
        Store(tmp_path / "store"),
        [str(shared_data / HH)],
        IngestOptions(batch_rows=500),
        on_batch=lambda r: seen.append((r.rows_read, r.accepted)),
    )
    assert [n for n, _ in seen] == [500, 1000, 1500, 2000, 2312] == sorted({n for n, _ in seen})
    assert seen[-1] == (res.rows_read, res.accepted)


def test_the_reader_starts_before_validation_and_stops_if_the_suite_fails(shared_data, tmp_path, monkeypatch):
    """Batches are read while the Great Expectations suite is built; if building it fails, the reader
    thread stops, nothing is committed, and the next run completes."""
    src = shared_data / HH
    read_before_suite = threading.Event()
    real_read = pipeline.read_batches

    def reading(*args, **kwargs):
        for batch in real_read(*args, **kwargs):
            read_before_suite.set()
            yield batch

    def failing_suite(*args, **kwargs):
        assert read_before_suite.wait(10)  # the first batch was read while the suite was being built
        raise ImportError("great_expectations is broken")

    monkeypatch.setattr(pipeline, "read_batches", reading)
    monkeypatch.setattr(pipeline, "Validator", failing_suite)
    store = Store(tmp_path / "store")
    with pytest.raises(ImportError, match="great_expectations is broken"):
        ingest_paths(store, [str(src)], IngestOptions(batch_rows=500, overlap=True))
    assert not any(t.name == "ingest-ahead" for t in threading.enumerate())
    assert not list((tmp_path / "store").glob("ingest/*"))
    monkeypatch.undo()
    (res,) = ingest_paths(store, [str(src)], IngestOptions(batch_rows=500, overlap=True))
    assert res.reconciles and not res.skipped and res.accepted > 2000
    assert not list((tmp_path / "store").glob(".staging/*"))  # the failed run's leftovers are gone
