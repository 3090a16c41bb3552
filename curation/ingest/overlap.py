"""Overlap the stages of ingest on several cores: a producer thread ahead of the consumer, and one
writer thread behind it.

Polars, Arrow's JSON parser and the Parquet writer release the GIL for their
heavy work, so plain threads let parsing the next batch, validating this one
and writing the previous one run at the same time. Results keep their order and
every exception reaches the caller (an error while reading may surface before
the batches still in flight, which is the same for ingest: the unit is aborted).
The helpers take ``enabled=False`` to run inline (one core: no thread switches).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import polars as pl

T = TypeVar("T")
U = TypeVar("U")
_DONE = object()


def default_enabled() -> bool:
    """Overlap when polars may use more than one thread (``POLARS_MAX_THREADS=1`` keeps ingest on one core)."""
    return pl.thread_pool_size() > 1


def ahead(items: Iterator[T], depth: int = 1, enabled: bool = True) -> Iterator[T]:
    """``items`` computed in a background thread, at most ``depth`` ahead of the consumer.

    The thread starts at once, so the first items are ready before the consumer asks. An exception in
    the producer is raised in the consumer where the item would have been. At the end, at that error,
    or when the consumer calls ``close()`` (``ordered_map`` does when it is closed), the producer stops
    after its current item and ``items`` is closed. A consumer that stops early must close it: the thread
    holds a reference to it, so it is not collected.
    """
    return _Ahead(items, depth) if enabled else items


class _Ahead(Generic[T]):
    def __init__(self, items: Iterator[T], depth: int) -> None:
        self.items = items
        self.q: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.closed = False
        self.worker = threading.Thread(target=self._produce, name="ingest-ahead", daemon=True)
        self.worker.start()

    def _put(self, item: tuple[Any, BaseException | None]) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self.items:
                if not self._put((item, None)):
                    return
            self._put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((_DONE, exc))

    def __iter__(self) -> _Ahead[T]:
        return self

    def __next__(self) -> T:
        if self.closed:
            raise StopIteration
        try:
            item, exc = self.q.get()
        except BaseException:  # interrupted while waiting
            self.close()
            raise
        if exc is not None or item is _DONE:
            self.close()
            if exc is not None:
                raise exc
            raise StopIteration
        return item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop.set()
        self.worker.join()
        _close(self.items)


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def ordered_map(fn: Callable[[T], U], items: Iterator[T], workers: int) -> Iterator[U]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, ``workers`` calls in flight.

    Items are pulled in the consumer's thread (wrap them in ``ahead`` to pull them elsewhere).
    Closing it (or an error) cancels the calls not started, waits for the running ones and closes ``items``.
    """
    if workers <= 1:
        try:
            yield from map(fn, items)
        finally:
            _close(items)
        return
    pending: deque[Future[U]] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-map") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            _close(items)


class Alongside(Generic[T]):
    """``fn(stop)`` on a background thread while the caller goes on; ``result()`` waits for it.

    ``cancel()`` sets ``stop`` (``fn`` should check it now and then) and does not wait. With
    ``enabled=False`` nothing runs until ``result()``, which then calls ``fn`` inline.
    """

    def __init__(self, fn: Callable[[threading.Event], T], enabled: bool = True) -> None:
        self.fn, self.stop = fn, threading.Event()
        self.pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-alongside") if enabled else None
        )
        self.future = self.pool.submit(fn, self.stop) if self.pool is not None else None

    def result(self) -> T:
        if self.future is None:
            return self.fn(self.stop)
        try:
            return self.future.result()
        finally:
            self.pool.shutdown(wait=False)  # type: ignore[union-attr]

    def cancel(self) -> None:
        self.stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


class Behind:
    """Runs calls in order on one background thread, one at a time, at most one pending.

    ``submit`` first waits for the previous call (raising its exception, if any), so memory holds
    at most one batch in flight. ``wait`` raises a pending error; ``drain`` waits and swallows it.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") if enabled else None
        self.pending: Future[None] | None = None

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.pool is None:
            fn(*args)
            return
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def drain(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.exception()  # wait; the caller is already failing with its own error

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
