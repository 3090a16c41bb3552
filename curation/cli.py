"""`curate`: the command line. Each command is a thin wrapper over a plain Python function.

Heavy libraries (torch, transformers, prefect) are imported inside the
commands that need them, so `curate sql` and `curate stats` start fast.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from curation.cli_options import STORE_HELP, StoreOpt, default_store, open_store  # noqa: F401 (shared)
from curation.models import ModelError
from curation.store import StoreError
from curation.terminal import esc, text

app = typer.Typer(
    name="curate",
    help="Curate instruction and preference data for LLM post-training: ingest, score, build shards, train.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 1) -> None:
    """Print one error (its text as data: no markup, no control codes, one line however long) and exit."""
    print_error(message)
    raise typer.Exit(code)


def print_error(message: object) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", text(message)), soft_wrap=True)


def print_table(table, limit: int | None = 50, title: str | None = None) -> None:
    """Pretty-print an Arrow table (first ``limit`` rows); names and values are printed as data."""
    t = Table(title=text(title) if title is not None else None, show_lines=False)
    for name in table.column_names:
        t.add_column(text(name), overflow="fold", max_width=60)
    rows = table.slice(0, limit).to_pylist() if limit else table.to_pylist()
    for row in rows:
        t.add_row(*[_cell(v) for v in row.values()])
    console.print(t)
    if limit and table.num_rows > limit:
        console.print(f"[dim]{table.num_rows - limit} more rows (use --limit 0 or --out FILE)[/]")


def _cell(v) -> Text:
    if v is None:
        return text("null", "dim")
    if isinstance(v, float):
        return text(f"{v:.4g}")
    s = str(v)
    return text(s if len(s) <= 300 else s[:300] + "…")


def parse_pairs(items: list[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            fail(f"{option} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------- ingest
@app.command()
def ingest(
    paths: list[str] = typer.Argument(
        ..., help="Input files, globs or folders (JSON, JSONL, .gz, Parquet, CSV)."
    ),
    store: str | None = StoreOpt,
    reader: str = typer.Option(
        "auto",
        help="Reader: auto, hh, alpaca, alpaca_pair, sharegpt, sharegpt_pair, messages, trl, "
        "alpaca_eval, oasst, solutions, completions.",
    ),
    fmt: str = typer.Option("auto", "--format", help="File format: auto, json, jsonl, parquet, csv."),
    source: str | None = typer.Option(
        None, help="Source name for the records (default: the file name's stem)."
    ),
    kind: str | None = typer.Option(None, help="Kind for --map: sft, pair or ranking."),
    map_: list[str] = typer.Option(
        [],
        "--map",
        help="Column mapping TARGET=PATH, e.g. prompt=question or response=instances[0].output (repeatable).",
    ),
    label_value: list[str] = typer.Option(
        [],
        "--label-value",
        help="For --map label=...: RAW=a|b|tie, e.g. model_a=a (repeatable; replaces the defaults).",
    ),
    max_chars: int = typer.Option(
        20000,
        help="Upper bound on a record's characters; longer rows are quarantined. A JSONL or CSV line over "
        "max(16 MiB, 64 bytes per character) is quarantined unread.",
    ),
    max_json_mb: float = typer.Option(
        256, help="Largest JSON document (not JSON Lines) read, in MiB once decompressed: it is parsed whole."
    ),
    near_threshold: float | None = typer.Option(
        None,
        help="MinHash Jaccard threshold for near-duplicate prompts and responses "
        "(default: the one the store's marks were made with, else 0.8).",
        show_default=False,
    ),
    near_dedup: bool = typer.Option(
        True, help="Recompute the near-duplicate marks that are stale (new units, another threshold)."
    ),
) -> None:
    """Read files into the store: normalise, hash, validate (Great Expectations), dedup; bad rows to quarantine."""
    from curation.dedup import MinHashParams, near_counts, refresh_near_duplicates
    from curation.ingest.pipeline import IngestOptions, ingest_paths
    from curation.ingest.readers import DetectError
    from curation.ingest.sources import SourceError

    opts = IngestOptions(
        reader=reader,
        format=fmt,
        source=source,
        kind=kind,
        mapping=parse_pairs(map_, "--map"),
        label_values=parse_pairs(label_value, "--label-value") or None,
        max_chars=max_chars,
        max_json_bytes=int(max_json_mb * 2**20),
    )
    if max_json_mb <= 0:
        fail("--max-json-mb must be positive")
    st = open_store(store, create=True)
    try:
        with _RowsProgress() as bar:
            results = ingest_paths(st, paths, opts, progress=bar.done, on_batch=bar.update)
        near = {}
        if near_dedup:  # after every ingest, even one that skipped every file: an earlier run may have
            # committed units and died before marking them (curation.dedup: marks know their inputs)
            with st.writer_lock("near-dedup"):
                params = None if near_threshold is None else MinHashParams(threshold=near_threshold)
                near = refresh_near_duplicates(st, params)
                if near:
                    st.refresh_catalog()
    except (SourceError, DetectError, StoreError, ValueError) as exc:
        fail(str(exc))
        return
    console.print(ingest_table(results, f"ingest → {st.root}"))
    console.print(
        "[dim]rows read = rows quarantined + rows converted (a row gives one record, or several: OASST trees); "
        "records = accepted + records quarantined + duplicates[/]"
    )
    if near:
        counts = near_counts(st)
        console.print(
            "near-duplicates marked (records sharing a prompt cluster with an earlier record / "
            "near-identical to an earlier record): "
            + ", ".join(f"{k}: {counts.get(k, (0, 0))[0]} / {counts.get(k, (0, 0))[1]}" for k in near)
        )
    failed = [r for r in results if r.error]
    if failed:
        names = ", ".join(Path(r.source_file).name for r in failed)
        fail(
            f"{len(failed)} of {len(results)} file(s) not ingested ({names}); see the reasons above. "
            "The other files are committed: after fixing or removing these, the same command skips them."
        )


#: Columns of the ingest table: (title, UnitResult attribute); the counts right-aligned.
INGEST_COLUMNS = (
    ("source", "source"),
    ("file", "source_file"),
    ("reader", "reader"),
    ("kind", "kind"),
    ("rows\nread", "rows_read"),
    ("rows\nquarantined", "rows_quarantined"),
    ("records", "records_out"),
    ("accepted", "accepted"),
    ("records\nquarantined", "records_quarantined"),
    ("duplicates", "duplicates"),
)


def ingest_table(results: list, title: str) -> Table:
    """One line per input file, names in full; a file that was not ingested says so."""
    t = Table(title=text(title))
    names = [(r.source, Path(r.source_file).name) for r in results]
    for i, (name, _) in enumerate(INGEST_COLUMNS):
        if i < 2:  # source and file names are never cut
            t.add_column(name, min_width=max((len(n[i]) for n in names), default=4), overflow="fold")
        else:
            t.add_column(name, justify="left" if i < 4 else "right")
    t.add_column("note")
    for r, (source, file) in zip(results, names, strict=True):
        counts = ["" if r.error else str(getattr(r, attr)) for _, attr in INGEST_COLUMNS[3:]]
        note = "NOT INGESTED" if r.error else "already ingested" if r.skipped else ""
        reader = "" if r.error else r.reader
        t.add_row(text(source), text(file), text(reader), *counts, note)  # names are data, not markup
    return t


class _RowsProgress:
    """Rows read so far per file, on stderr while a large file is ingested (nothing when not a terminal)."""

    def __init__(self) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed:,} rows read"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _RowsProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def update(self, r) -> None:
        if r.source_file not in self.tasks:
            self.tasks[r.source_file] = self.bar.add_task(esc(Path(r.source_file).name), total=None)
        self.bar.update(self.tasks[r.source_file], completed=r.rows_read)

    def done(self, r) -> None:
        task = self.tasks.pop(r.source_file, None)
        if task is not None:
            self.bar.remove_task(task)
        _report_unit(r)


def _report_unit(r) -> None:
    """One line per file on stderr; its name and error are printed as data (never read as markup)."""
    if r.error:
        err.print(Text.assemble(("not ingested: ", "bold red"), text(r.error)))
    else:
        state = "skipped (already ingested)" if r.skipped else "ingested"
        err.print(
            Text.assemble((state, "dim"), " ", text(r.source_file), (f" as {r.reader} → {r.kind}", "dim"))
        )


# ------------------------------------------------------------------------ sql
@app.command()
def sql(
    query: str = typer.Argument(
        ...,
        help="One read-only statement (SELECT, WITH, FROM, VALUES, DESCRIBE, SUMMARIZE, SHOW, or EXPLAIN "
        "[ANALYZE] of one) over the views (sft, pairs, rankings, quarantine, duplicates, ingest_runs, "
        "near_duplicates, scored_*); files are read only through the views.",
    ),
    store: str | None = StoreOpt,
    out: Path | None = typer.Option(
        None, help="Write the result to FILE (.csv, .parquet or .json) instead of printing."
    ),
    limit: int = typer.Option(50, help="Rows to print (0 = all)."),
) -> None:
    """Query the store with DuckDB SQL: one read-only statement, run in the store's sandbox (curation/sql.py);
    never blocks a running writer. Exit code 2 when the statement is refused or fails."""
    from curation.sql import SQLRefused
    from curation.sql import query as run_query

    st = open_store(store)
    try:
        table = run_query(st, query)
    except SQLRefused as exc:
        fail(str(exc), 2)
        return
    except Exception as exc:  # duckdb errors carry a good message; show it plainly
        fail(str(exc).strip(), 2)
        return
    if out is None:
        print_table(table, limit or None)
        return
    write_table(table, st.output_path(out))  # never over a file of the store
    console.print(f"{table.num_rows} rows → {esc(out)}")


def write_table(table, out: Path) -> None:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    suffix = out.suffix.lower()
    if suffix == ".parquet":
        pq.write_table(table, out)
    elif suffix == ".csv":
        pacsv.write_csv(table, out)
    elif suffix in (".json", ".jsonl"):
        import orjson

        with open(out, "wb") as fh:
            for row in table.to_pylist():
                fh.write(orjson.dumps(row, default=str) + b"\n")
    else:
        fail(f"--out {out}: unknown extension; use .csv, .parquet or .json")


# ---------------------------------------------------------------------- stats
@app.command()
def stats(store: str | None = StoreOpt) -> None:
    """Counts per kind and source, quarantine reasons, duplicates, near-duplicates at both levels, and
    the chosen-longer share of the pairs per source (raw, per quality class, and in each build)."""
    import pyarrow as pa

    from curation.build import build_names, read_manifest
    from curation.dedup import stale_kinds
    from curation.length_diagnostics import DEFINITION, build_rows, raw_rows, store_diagnostics
    from curation.sql import query as run_query

    st = open_store(store)
    print_table(
        run_query(
            st,
            """
        SELECT source, kind, sum(rows_read) AS rows_read,
               sum(accepted + quarantined + duplicates - records_out) AS rows_quarantined,
               sum(records_out) AS records, sum(accepted) AS accepted,
               sum(records_out - accepted - duplicates) AS records_quarantined, sum(duplicates) AS duplicates
        FROM ingest_runs GROUP BY ALL ORDER BY kind, source""",
        ),
        None,
        "records by source",
    )
    print_table(
        run_query(
            st,
            """
        SELECT source, field, regexp_replace(reason, '[0-9]+', 'N', 'g') AS reason, count(*) AS rows
        FROM quarantine GROUP BY ALL ORDER BY rows DESC""",
        ),
        30,
        "quarantine reasons",
    )
    print_table(
        run_query(
            st,
            """
        SELECT kind, count(DISTINCT cluster) AS prompt_clusters, count(*) AS records_in_clusters,
               count(*) FILTER (WHERE NOT representative) AS same_prompt_as_earlier,
               count(*) FILTER (WHERE NOT record_representative) AS near_identical_to_earlier
        FROM near_duplicates GROUP BY kind ORDER BY kind""",
        ),
        None,
        "near-duplicates (the default policy drops near-identical pairs and rankings, and SFT records "
        "by prompt)",
    )
    stale = stale_kinds(st)
    if stale:
        console.print(
            f"[yellow]near-duplicate marks are stale for {', '.join(stale)}[/] (units ingested since they "
            "were made); the next `curate ingest` or `curate build` recomputes them"
        )
    raw = store_diagnostics(st)
    if raw:
        print_table(pa.Table.from_pylist(raw_rows(raw)), None, "chosen-longer share of the pairs, by source")
        builds = [
            row
            for name in build_names(st)
            for row in build_rows(name, read_manifest(st, name).get("length_diagnostics") or {})
        ]
        if builds:
            print_table(
                pa.Table.from_pylist(builds), None, "chosen-longer share: raw pairs against rm shards"
            )
        console.print(
            f"[dim]{DEFINITION}; per quality class once `curate score reward_margin` has run "
            "(incorrect: the label is likely wrong; ambiguous: weak preference; clean: the rest)[/]"
        )


def _register_subcommands() -> None:
    """Commands owned by other packages: scoring, curation builds, training, orchestration."""
    from curation.build_cli import register as register_build
    from curation.scoring.cli import register as register_score
    from flows.cli import register as register_flows
    from training.cli import register as register_train

    for register in (register_score, register_build, register_train, register_flows):
        register(app)


_register_subcommands()


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


def main() -> None:  # pragma: no cover - console entry point
    configure_allocators()  # this module does not import polars; its commands do, when they run
    try:
        app()
    except (StoreError, ModelError) as exc:  # a command that did not catch its own
        print_error(exc)
        sys.exit(1)
    finally:
        # The process is about to exit: spare the interpreter's final garbage collection over the
        # hundreds of thousands of objects Great Expectations (or torch) left, about 1 s of the exit.
        # Every file is closed and committed by now; only unreachable cycles are left uncollected.
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover - `python -m curation.cli`
    main()
