"""`curate`: the command line. One module per command, each a thin wrapper over a plain Python function;
what they share (the ``--store`` option, the consoles, printing data as data) is in ``common``.

Heavy libraries (polars, torch, transformers, prefect) are imported inside the commands that need them, so
`curate sql` and `curate stats` start fast and the allocator settings below take effect.
"""

from __future__ import annotations

import gc
import os
import signal
import sys

import typer

from curation.cli import build, demo, explain, ingest, report, score, serve, sql, stats, train
from curation.cli.common import print_error
from curation.core.errors import StoreError
from curation.core.models import ModelError

app = typer.Typer(
    name="curate",
    help="Curate instruction and preference data for LLM post-training: ingest, score, build shards, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (ingest, sql, stats, score, build, explain, report, demo, serve):
    app.command(module.__name__.rsplit(".", 1)[-1])(getattr(module, module.__name__.rsplit(".", 1)[-1]))
app.add_typer(train.app, name="train")


#: Process-wide allocator settings of the ``curate`` command (a value already in the environment wins).
#: polars' jemalloc gives large freed blocks back to the kernel at once, so each ingest batch faults its
#: columns in again: a million page faults per million HH rows, the kernel zeroing every page. Kept for
#: 30 s instead, they are reused: 0.4M faults, 6-10 % less CPU time and about 0.6 s of 12-13 s at two
#: threads (benchmarks/ingest/README.md); memory left idle still goes back after 30 s.
ALLOCATOR_ENV = {"_RJEM_MALLOC_CONF": "dirty_decay_ms:30000,muzzy_decay_ms:30000"}


def configure_allocators() -> bool:
    """Set ``ALLOCATOR_ENV``'s defaults; they take effect only if polars is not loaded yet (jemalloc reads
    them once, when polars loads), so call this first. False if it came too late."""
    for name, value in ALLOCATOR_ENV.items():
        os.environ.setdefault(name, value)
    return "polars" not in sys.modules


def _stop_on_sigterm() -> list[int]:
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, systemd, a cancelled flow) stops a command as Ctrl-C
    does, so its clean-up runs (a half-read file's staging folder is removed at once, the writer lock let
    go) instead of the process vanishing mid-step. Returns the list the signal is recorded in."""
    got: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, stop)
    return got


def main() -> None:  # pragma: no cover - console entry point
    configure_allocators()  # this module does not import polars; its commands do, when they run
    terminated = _stop_on_sigterm()
    try:
        app()
    except (StoreError, ModelError) as exc:  # a command that did not catch its own
        print_error(exc)
        sys.exit(1)
    except SystemExit:
        if terminated:  # the exit status of a process killed by the signal, as before
            sys.exit(128 + signal.SIGTERM)
        raise
    finally:
        # The process is about to exit: spare the interpreter's final garbage collection over the
        # hundreds of thousands of objects Great Expectations (or torch) left, about 1 s of the exit.
        # Every file is closed and committed by now; only unreachable cycles are left uncollected.
        gc.freeze()
