"""`curate ingest`: read files into the store, then mark near-duplicates; one accounting line per file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from curation.cli.common import StoreOpt, console, err, esc, fail, open_store, parse_pairs, text
from curation.core.errors import StoreError
from curation.ingest.readers import reader_help


def ingest(
    paths: list[str] = typer.Argument(
        ..., help="Input files, globs or folders (JSON, JSONL, .gz, Parquet, CSV)."
    ),
    store: str | None = StoreOpt,
    reader: str = typer.Option(
        "auto", help="Reader: auto (detected, trying them in this order) or one of:\n\n" + reader_help()
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
    workers: int = typer.Option(
        1,
        help="Ingest this many files at once on Ray (one task per file; the same store as one process). "
        "Needs the extra: pip install 'curate[ray]'.",
    ),
    ray_address: str | None = typer.Option(
        None,
        help="Join this Ray cluster ('auto', 'ray://head:10001') instead of starting a local instance; "
        "the store must be on a filesystem every node sees.",
    ),
) -> None:
    """Read files into the store: normalise, hash, validate (Great Expectations), dedup; bad rows to quarantine."""
    from curation import catalog
    from curation.ingest.dedup import MinHashParams, near_counts, refresh_near_duplicates
    from curation.ingest.pipeline import IngestOptions, earlier_versions_note, ingest_paths
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
    if workers < 1:
        fail("--workers must be at least 1")
    if workers > 1 or ray_address:
        from curation.ingest.parallel import RayMissing, import_ray

        try:
            import_ray()  # before the store is touched: one line naming the extra
        except RayMissing as exc:
            fail(str(exc))
    st = open_store(store, create=True)
    try:
        with _RowsProgress() as bar:
            if workers > 1 or ray_address:  # one Ray task per file, committed in input order
                from curation.ingest.parallel import ingest_parallel

                results = ingest_parallel(st, paths, opts, workers, ray_address, progress=bar.done)
            else:
                results = ingest_paths(st, paths, opts, progress=bar.done, on_batch=bar.update)
        near = {}
        if near_dedup:  # after every ingest, even one that skipped every file: an earlier run may have
            # committed units and died before marking them (curation.ingest.dedup: marks know their inputs)
            with st.writer_lock("near-dedup"):
                params = None if near_threshold is None else MinHashParams(threshold=near_threshold)
                near = refresh_near_duplicates(st, params)
        catalog.refresh(st)  # catalog.duckdb lists the files of every view: rewritten after every ingest
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
    for r in results:
        if r.earlier_units:
            err.print(
                Text.assemble(
                    ("warning: ", "bold yellow"), text(earlier_versions_note(r.source_file, r.earlier_units))
                )
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
