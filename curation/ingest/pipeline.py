"""Ingest: read -> normalise -> hash -> validate -> dedup -> write, one committed unit per input file.

Each input file (with its reader and options) becomes one *unit* folder in the
store, written under ``.staging`` and renamed into ``ingest/`` when complete.
The unit key hashes the file's bytes, the reader, its options, the source name
and the schema version, so ingesting the same file twice adds nothing, and a
killed ingest resumes by skipping the units already committed.

Accounting per unit: every input row produces records or one quarantine row
(quarantined at read: not a JSON object, not well-formed CSV, or no records can
be made of it); every record is accepted, quarantined (failed validation) or a
duplicate (its content id is already in the store or earlier in the file). So
``records_out + rows_failed == accepted + quarantined + duplicates``, where
``quarantined`` counts both kinds of quarantine rows (``UnitResult`` splits them).

A file that cannot be read to its end (a truncated or corrupt .gz, a damaged
Parquet file, a JSON document over the size cap) commits nothing of itself: the
rows read before the error are dropped with its staging folder, the file is
reported by name with the reason, and the other files of the run are ingested.
A rerun skips the committed files and reports the bad one again. An error
writing the store (disk full, read-only) stops the run, saying which files were
committed.

Work is done a batch at a time (``batch_rows`` input rows, so memory does not
grow with the file): a reader converts what it can column-at-a-time
(``Reader.columnar``, e.g. HH transcripts with polars string ops) and
the rest row by row; then ids, the derived columns that Great Expectations
checks, and exact dedup are computed over the whole batch (curation.ingest.columnar).
With more than one core the stages overlap on threads (curation.ingest.overlap: parse ahead,
prepare ids and derived columns on two threads, dedup and validate here, write behind), with
the same output as the serial loop.
A copy of a record that fails validation is quarantined with the same reason,
never counted as a duplicate of something that is not stored. Known ids are
kept as sorted 16-byte digests (16 bytes per record, not a Python set).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import json
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from curation.core.errors import StoreError, io_error
from curation.core.hashing import file_sha256
from curation.core.names import plain_name, safe_name
from curation.core.store import Store
from curation.ingest.blocks import ArrowBatch, Batch, read_batches, read_parquet_batches
from curation.ingest.columnar import (
    IdSet,
    content_key_expr,
    derive_columns,
    derive_frame,
    first_occurrence,
    hex_ids,
    xxh3_digests,
)
from curation.ingest.overlap import Alongside, Behind, ahead, default_enabled, ordered_map
from curation.ingest.readers import BY_NAME, DetectError, MappingReader, Reader, RowError, detect
from curation.ingest.readers.base import meta_json
from curation.ingest.sources import (
    BATCH_BYTES,
    MAX_JSON_BYTES,
    READ_ERRORS,
    RawRow,
    SourceError,
    detect_format,
    expand_paths,
    guarded,
    read_rows,
    row_byte_limit,
    why_unreadable,
)
from curation.ingest.validate import DEFAULT_MAX_CHARS, Validator, derive, explain, prefetch_gx
from schemas import DUPLICATE_SCHEMA, INGEST_RUN_SCHEMA, QUARANTINE_SCHEMA, SCHEMA_VERSION, SCHEMAS

BATCH_ROWS = 50_000


@dataclass
class IngestOptions:
    """How to read the inputs. ``reader='auto'`` detects the format from the first rows."""

    reader: str = "auto"
    format: str = "auto"
    source: str | None = None
    kind: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)
    label_values: dict[str, str] | None = None
    max_chars: int = DEFAULT_MAX_CHARS
    #: A JSON document (not JSON Lines) larger than this, decompressed, is refused whole (see sources.py).
    max_json_bytes: int = MAX_JSON_BYTES
    batch_rows: int = BATCH_ROWS
    #: ... or fewer rows when their text reaches this many bytes (JSONL and CSV; see sources.BATCH_BYTES).
    batch_bytes: int = BATCH_BYTES
    #: Take JSONL and Parquet batches as Arrow columns where the reader has a columnar path (same output;
    #: see ingest/blocks.py).
    block_path: bool = True
    #: Parse the next batch and write the last one while this one is validated (ingest/overlap.py);
    #: None: when polars may use more than one thread. Same output either way.
    overlap: bool | None = None


@dataclass
class UnitResult:
    """The accounting of one input file."""

    source: str
    source_file: str
    reader: str
    kind: str
    unit: str
    rows_read: int = 0
    records_out: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    skipped: bool = False
    rows_converted: int = 0
    error: str | None = None  # the whole file could not be read (format unknown, not JSON, damaged ...)
    #: units of the same source committed from this same file when it held other content: their rows stay
    #: in the store beside this unit's (the store is append-only), so a user must be told
    earlier_units: list[str] = field(default_factory=list)

    @property
    def rows_quarantined(self) -> int:
        """Input rows quarantined as they were read (no records could be made of them)."""
        return self.rows_read - self.rows_converted

    @property
    def records_quarantined(self) -> int:
        """Records quarantined by validation (``quarantined`` counts these and ``rows_quarantined``)."""
        return self.quarantined - self.rows_quarantined

    @property
    def reconciles(self) -> bool:
        return self.records_out + self.rows_quarantined == self.accepted + self.quarantined + self.duplicates


def make_reader(opts: IngestOptions, sample: list[dict[str, Any]], where: str) -> Reader:
    if opts.mapping:
        if not opts.kind:
            raise ValueError("--map needs --kind sft|pair|ranking")
        return MappingReader(opts.kind, opts.mapping, opts.label_values)  # type: ignore[arg-type]
    if opts.reader != "auto":
        if opts.reader not in BY_NAME:
            raise ValueError(f"unknown reader {opts.reader!r}; choose one of {', '.join(BY_NAME)} or 'auto'")
        return BY_NAME[opts.reader]()
    return detect(sample, where)()


def no_readable_row(path: Path, head: list[RawRow]) -> str:
    """Why the reader of a file whose first rows (``head``) hold no readable one cannot be detected."""
    if not head:
        return f"{path}: no rows (the file is empty, or holds only blank lines or a CSV header); nothing to ingest"
    return (
        f"{path}: no readable row among its first {len(head)} to detect its layout from (row {head[0].row}: "
        f"{head[0].error}); fix the file, or pass --reader to quarantine such rows one by one"
    )


def source_name(path: Path, opts: IngestOptions) -> str:
    if opts.source is not None:
        return safe_name(opts.source, "source name")
    name = path.name
    for suffix in (".gz", ".bz2", ".xz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    name = name or "input"
    return plain_name("".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:100])


def ingest_paths(
    store: Store,
    paths: list[str],
    opts: IngestOptions | None = None,
    progress: Callable[[UnitResult], None] | None = None,
    on_batch: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """Ingest files, globs or folders into ``store``; returns one accounting row per file.

    ``progress`` is called with each file's accounting when it is done, ``on_batch`` with the running
    accounting after each batch (for a progress bar on large files)."""
    opts = opts or IngestOptions()
    files = expand_paths(paths)
    if files and "great_expectations" not in sys.modules:
        prefetch_gx()
    results: list[UnitResult] = []
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with store.writer_lock("ingest"):
        seen: dict[str, IdSet] = {}
        validators: dict[str, Validator] = {}
        for path in files:
            try:
                res = ingest_file(store, path, opts, run_id, seen, validators, on_batch)
            except (SourceError, DetectError) as exc:  # this file only: the others go on
                res = failed_result(path, opts, exc)
            except OSError as exc:  # writing the store: the files after this one would fail too
                raise io_error(exc, f"ingesting {path}", committed_so_far(results, path)) from exc
            except StoreError as exc:  # e.g. the commit's rename: say what happened to the run
                if isinstance(exc.__cause__, OSError):
                    raise io_error(
                        exc.__cause__, f"committing {path}", committed_so_far(results, path)
                    ) from exc
                raise StoreError(f"{exc} ({committed_so_far(results, path)})") from exc
            results.append(res)
            if progress:
                progress(res)
        mark_earlier_versions(store, results)
    return results


def earlier_versions_note(source_file: str, units: list[str]) -> str:
    """What to tell a user whose file was ingested before with other content (``mark_earlier_versions``)."""
    return (
        f"{source_file} was ingested before with other content (unit {', '.join(units)}): the store keeps "
        "every version, so the rows of the earlier one that this one changed or removed are still read "
        "by scores and builds"
    )


def mark_earlier_versions(store: Store, results: list[UnitResult]) -> None:
    """Set each result's ``earlier_units``: the units of its source read from the same file (same resolved
    path) with other content than its unit (committed by this run, or skipped as already in the store: a
    file edited, then edited back). One pass over the store's accounting rows for the whole run."""
    wanted = {(r.source, Path(r.source_file).resolve()): r for r in results if r.unit and not r.error}
    if not wanted:
        return
    for unit in sorted(store.path("ingest").iterdir()):
        if not (unit / "run.parquet").is_file():
            continue
        run = pq.read_table(unit / "run.parquet", columns=["source", "source_file"]).to_pylist()[0]
        res = wanted.get((run["source"], Path(run["source_file"]).resolve()))
        if res is not None and unit.name != res.unit:
            res.earlier_units.append(unit.name)


def failed_result(path: Path, opts: IngestOptions, exc: Exception) -> UnitResult:
    """The result of a file that could not be read (no unit; the reason in ``error``)."""
    return UnitResult(
        source=source_name(path, opts),
        source_file=str(path),
        reader=opts.reader,
        kind=opts.kind or "?",
        unit="",
        error=str(exc),
    )


def committed_so_far(results: list[UnitResult], path: Path) -> str:
    """What a run stopped at ``path`` leaves in the store, in words."""
    done = [r for r in results if r.unit and not r.skipped]
    if not done:
        return "nothing was committed, the store is unchanged"
    names = ", ".join(Path(r.source_file).name for r in done[:5]) + (", ..." if len(done) > 5 else "")
    return f"{path.name} was not committed; the {len(done)} file(s) before it were and are kept ({names})"


def ingest_file(
    store: Store,
    path: Path,
    opts: IngestOptions,
    run_id: str,
    seen: dict[str, IdSet],
    validators: dict[str, Validator],
    on_batch: Callable[[UnitResult], None] | None = None,
    commit: Callable[[Path, UnitResult], None] | None = None,
) -> UnitResult:
    """Ingest one file into a staged unit and commit it (``commit(staged, res)`` instead, if given: a
    parallel worker leaves the staged folder to the driver, curation.ingest.parallel)."""
    limit = row_byte_limit(opts.max_chars)
    rows = read_rows(path, opts.format, opts.batch_rows, limit, opts.max_json_bytes)
    head: list[RawRow] = []
    for raw in rows:
        head.append(raw)
        if len(head) >= 20:
            break
    sample = [r.value for r in head if r.value is not None]
    if not sample and not opts.mapping and opts.reader == "auto":
        rows.close()  # type: ignore[attr-defined]
        raise DetectError(no_readable_row(path, head))
    reader = make_reader(opts, sample, str(path))
    source = source_name(path, opts)
    overlap = default_enabled() if opts.overlap is None else opts.overlap

    def unit_of(sha: str) -> str:
        key_material = json.dumps(
            {
                "sha": sha,
                "reader": reader.name,
                "options": reader.options(),
                "source": source,
                "format": opts.format,
                "max_chars": opts.max_chars,
                "schema": SCHEMA_VERSION,
            },
            sort_keys=True,
        )
        return f"{source}-{xxhash.xxh3_64_hexdigest(key_material.encode())}"

    # The unit key needs the file's SHA-256 (about 1 s per GB). If a unit of this source is committed, it
    # may be this very file: hash first and skip it if so. Else the file is hashed while it is ingested
    # (below: by the reading thread from the bytes it reads, or by a thread of its own), as the key is
    # only needed to commit.
    res = UnitResult(source=source, source_file=str(path), reader=reader.name, kind=reader.kind, unit="")
    sha: str | None = None
    if any(store.path("ingest").glob(f"{glob.escape(source)}-*")):
        sha = _sha256(path)
        res.unit = unit_of(sha)  # type: ignore[arg-type]
        if store.path("ingest", res.unit).exists():
            rows.close()  # type: ignore[attr-defined]
            return skipped_result(store, res)

    kind = reader.kind
    started = dt.datetime.now(dt.UTC)
    staged = store.new_staging_dir()
    writers = _Writers(staged, kind, background=overlap)
    fmt = detect_format(path) if opts.format == "auto" else opts.format
    batches: Iterator[Batch]
    digest = None  # the SHA-256 being computed as the file is read, if it is
    schema = reader.block_schema(sample) if opts.block_path else None
    if schema is not None and fmt in ("jsonl", "parquet"):
        rows.close()  # type: ignore[attr-defined]
        if fmt == "jsonl":
            digest = hashlib.sha256() if sha is None else None  # hashed by the reading thread as it reads
            # overlapped, the reading thread parses on its own: Arrow's pool on top of the preparing and
            # writing threads was slower on the 1M-row file (benchmarks/ingest/README.md)
            batches = read_batches(
                path,
                opts.batch_rows,
                schema,
                reader.reads,
                digest,
                parse_threads=not overlap,
                limit=limit,
                batch_bytes=opts.batch_bytes,
            )
        else:
            batches = read_parquet_batches(path, opts.batch_rows, schema, reader.reads, limit)
    else:
        batches = _batches(_chain(head, rows), opts.batch_rows, opts.batch_bytes)
    batches = guarded(path, batches, len)  # a damaged file: SourceError, as from read_rows
    hashing = Alongside(
        lambda stop: sha or _sha256(path, stop), enabled=overlap and sha is None and digest is None
    )
    # one thread reads and parses, starting now: the first batches are ready when the known ids and the
    # Great Expectations suite (about 3 s of Python on first use) are loaded. (Preparing batches while
    # the suite is built was no faster: the import then shares the cores with them, benchmarks/ingest.)
    parsed = ahead(batches, enabled=overlap)
    try:
        if kind not in seen:
            seen[kind] = IdSet.from_parquet(store.files(f"ingest/*/{kind}.parquet"))
        if kind not in validators:
            validators[kind] = Validator(kind, opts.max_chars)
        ids = seen[kind]
        ctx = _Ctx(source, str(path), run_id, reader, kind, validators[kind])
        # two threads prepare batches (ids, derived columns), this one dedups and validates, and the
        # writer thread writes: the same batches in the same order as the serial loop
        prepared = ordered_map(lambda b: _prepare(b, ctx), parsed, workers=2 if overlap else 1)
        with contextlib.closing(prepared):  # on an error, the threads stop now, not when it is collected
            for batch, frame, keys, quarantine, converted in prepared:
                res.rows_read += len(batch)
                res.rows_converted += converted
                good, bad, dups, accepted_ids = _finish_batch(frame, keys, batch, ctx, ids)
                quarantine += bad
                ids.add(accepted_ids)  # later batches see this batch's records as existing
                res.records_out += 0 if frame is None else frame.height
                writers.write(good, quarantine, dups)
                res.accepted += 0 if good is None else good.num_rows
                res.quarantined += len(quarantine)
                res.duplicates += len(dups)
                if on_batch:
                    on_batch(res)
        writers.close()
        sha = digest.hexdigest() if digest is not None else hashing.result()
        res.unit = unit_of(sha)  # type: ignore[arg-type]
        run_row = {
            "ingest_run": run_id,
            "source": source,
            "source_file": str(path),
            "file_sha256": sha,
            "reader": reader.name,
            "kind": kind,
            "options": orjson.dumps(reader.options()).decode(),
            "rows_read": res.rows_read,
            "records_out": res.records_out,
            "accepted": res.accepted,
            "quarantined": res.quarantined,
            "duplicates": res.duplicates,
            "started_at": started,
            "finished_at": dt.datetime.now(dt.UTC),
            "schema_version": SCHEMA_VERSION,
        }
        pq.write_table(pa.Table.from_pylist([run_row], schema=INGEST_RUN_SCHEMA), staged / "run.parquet")
        if not res.reconciles:  # a bug, never expected: refuse to commit numbers that do not add up
            raise StoreError(f"{path}: accounting does not reconcile: {asdict(res)}")
        if commit is None:
            store.commit_dir(staged, f"ingest/{res.unit}")
        else:
            commit(staged, res)
    except BaseException:
        parsed.close()  # type: ignore[attr-defined]  (stops the reader if the loop never started)
        hashing.cancel()
        writers.abort()
        shutil.rmtree(staged, ignore_errors=True)  # nothing of this file stays behind, not even in staging
        seen.pop(kind, None)  # this unit's ids were not committed: reload from the store if needed
        raise
    return res


def _sha256(path: Path, stop: Any = None) -> str | None:
    """``file_sha256``; an error reading the input is the input's (SourceError), not the store's."""
    try:
        return file_sha256(path, stop)
    except READ_ERRORS as exc:
        raise SourceError(f"{path}: cannot be read: {why_unreadable(exc)}") from exc


def skipped_result(store: Store, res: UnitResult) -> UnitResult:
    """``res`` of a file whose unit is already committed: the accounting of the run that committed it."""
    prior = pq.read_table(store.path("ingest", res.unit, "run.parquet")).to_pylist()[0]
    for k in ("rows_read", "records_out", "accepted", "quarantined", "duplicates"):
        setattr(res, k, prior[k])
    # run.parquet does not hold it; the accounting identity gives it
    res.rows_converted = res.rows_read - (res.accepted + res.quarantined + res.duplicates - res.records_out)
    res.skipped = True
    return res


@dataclass
class _Ctx:
    """What every batch of one file needs."""

    source: str
    path: str
    run_id: str
    reader: Reader
    kind: str
    validator: Validator

    def q(self, raw: RawRow, fld: str, reason: str) -> dict[str, Any]:
        """The quarantine row of ``raw``."""
        return {
            "source": self.source,
            "source_file": self.path,  # str(path)
            "source_row": raw.row,
            "field": fld,
            "reason": reason,
            "raw": raw.raw_text(),
            "reader": self.reader.name,
            "ingest_run": self.run_id,
        }


def _content_schema(kind: str) -> pa.Schema:
    schema = SCHEMAS[kind]  # type: ignore[index]
    fields = [f for f in schema if f.name not in _PROVENANCE]
    return pa.schema([pa.field("_i", pa.int64()), *fields])


_PROVENANCE = ("id", "source", "source_file", "source_row", "ingest_run", "reader")


def _convert(batch: Batch, ctx: _Ctx) -> tuple[pl.DataFrame | None, list[dict[str, Any]], int]:
    """Canonical records of a batch (a polars frame with ``_i`` = position in ``batch``), the rows
    that could not be converted (quarantine rows) and the number of rows converted.

    Rows the reader converts column-at-a-time go straight into the frame; the others (in
    batch order) go through ``Reader.convert``: first the rows that are not valid JSON objects
    are quarantined, then each remaining row is converted or quarantined with its RowError."""
    if isinstance(batch, ArrowBatch):
        fast, rest = ctx.reader.take_table(batch.table, batch.meta)
    else:  # a row that is not a JSON object (its error) is left to the loop below
        fast, rest = ctx.reader.take_rows([raw.value if raw.error is None else None for raw in batch])
    pending = [(i, _raw(batch, i)) for i in rest]
    quarantine = [ctx.q(raw, raw.field, raw.error) for _, raw in pending if raw.error is not None]
    frames = []
    if fast is not None and fast.height:
        frames.append(fast)
    records: list[dict[str, Any]] = []
    converted = fast.get_column("_i").n_unique() if fast is not None and fast.height else 0
    for i, raw in pending:
        if raw.error is not None:
            continue
        try:
            out = ctx.reader.convert(raw.value)  # type: ignore[arg-type]
            metas = [meta_json(rec.get("meta")) for rec in out]
        except RowError as exc:
            quarantine.append(ctx.q(raw, exc.field, exc.reason))
            continue
        except RecursionError:
            quarantine.append(ctx.q(raw, "row", "nested too deeply"))
            continue
        converted += 1
        for rec, meta in zip(out, metas, strict=True):
            rec["_i"] = i
            rec["meta"] = meta
            records.append(rec)
    if records:
        table = pa.Table.from_pylist(records, schema=_content_schema(ctx.kind))
        frames.append(pl.from_arrow(table))  # type: ignore[arg-type]
    if not frames:
        return None, quarantine, converted
    frame = pl.concat([f.select(_content_schema(ctx.kind).names) for f in frames], how="vertical_relaxed")
    return (frame.sort("_i", maintain_order=True) if len(frames) > 1 else frame), quarantine, converted


def _raw(batch: Batch, i: int) -> RawRow:
    return batch.raw(i) if isinstance(batch, ArrowBatch) else batch[i]


def _row_numbers(batch: Batch) -> np.ndarray:
    if isinstance(batch, ArrowBatch):
        return batch.row_numbers()
    return np.fromiter((r.row for r in batch), dtype=np.int64, count=len(batch))


@dataclass
class _Keys:
    """Content ids of a batch's records, in frame order."""

    digests: np.ndarray  # 16-byte xxh3-128 digests
    hexes: pa.Array  # the same as 32-character hex ids


def _prepare(
    batch: Batch, ctx: _Ctx
) -> tuple[Batch, pl.DataFrame | None, _Keys | None, list[dict[str, Any]], int]:
    """What a batch needs before dedup, from the batch alone (so it can run ahead on another thread):
    (batch, records with stat and id columns, their ids, quarantine rows, rows converted)."""
    frame, quarantine, converted = _convert(batch, ctx)
    if frame is None or frame.height == 0:
        return batch, None, None, quarantine, converted
    kind = ctx.kind
    frame = frame.with_columns(derive_columns(kind))  # type: ignore[arg-type]
    digests = xxh3_digests(frame.select(content_key_expr(kind)).to_series())
    hexes = hex_ids(digests)
    frame = frame.with_columns(pl.Series("id", hexes))
    return batch, frame, _Keys(digests, hexes), quarantine, converted


def _finish_batch(
    frame: pl.DataFrame | None, keys: _Keys | None, batch: Batch, ctx: _Ctx, ids: IdSet
) -> tuple[pa.Table | None, list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """Validate and dedup a prepared batch: (accepted table, quarantine rows, duplicate rows, accepted ids)."""
    empty = np.array([], dtype="S16")
    if frame is None or keys is None:  # _prepare found no records
        return None, [], [], empty
    kind = ctx.kind
    digests, hexes = keys.digests, keys.hexes
    # exact duplicates: already in the store (or an earlier batch), or earlier in this batch
    dup = ids.contains(digests) | ~first_occurrence(digests)
    derived = derive_frame(kind, frame.filter(pl.Series(~dup)))  # type: ignore[arg-type]
    keep_pos = np.flatnonzero(~dup)
    failing = ctx.validator.failing_checks(derived.to_pandas())
    quarantine: list[dict[str, Any]] = []
    bad: dict[str, tuple[str, str]] = {}  # id -> (field, reason) of records that failed validation
    rows_i = frame.get_column("_i").to_numpy()
    if failing:  # the detail of each failure, from the failing records alone (derived once, in Python)
        positions = keep_pos[list(failing)]
        records = frame[positions].select(_content_schema(kind).names[1:]).to_dicts()
        details = derive(kind, records).to_dict("records")  # type: ignore[arg-type]
        for pos, chk, detail in zip(positions.tolist(), failing.values(), details, strict=True):
            fld, reason = explain(chk, detail)
            quarantine.append(ctx.q(_raw(batch, int(rows_i[pos])), fld, reason))
            bad[str(hexes[pos])] = (fld, reason)
    accept = ~dup
    if failing:
        accept[keep_pos[list(failing)]] = False
    dups = []
    row_numbers = _row_numbers(batch)
    for pos in np.flatnonzero(dup):
        rid = str(hexes[pos])
        if rid in bad:  # a copy of a record that failed validation fails it too
            quarantine.append(ctx.q(_raw(batch, int(rows_i[pos])), *bad[rid]))
            continue
        dups.append(
            {
                "id": rid,
                "kind": kind,
                "source": ctx.source,
                "source_file": ctx.path,
                "source_row": int(row_numbers[rows_i[pos]]),
                "ingest_run": ctx.run_id,
            }
        )
    mask = pl.Series(accept)
    good = frame.filter(mask)
    good = good.with_columns(
        pl.lit(ctx.source).alias("source"),
        pl.lit(ctx.path).alias("source_file"),
        pl.Series("source_row", row_numbers[good.get_column("_i").to_numpy()]),
        pl.lit(ctx.run_id).alias("ingest_run"),
        pl.lit(ctx.reader.name).alias("reader"),
    )
    schema = SCHEMAS[kind]  # type: ignore[index]
    table = good.select(schema.names).to_arrow().cast(schema)
    return table, quarantine, dups, digests[accept]


def _chain(head: list[RawRow], rest: Iterator[RawRow]) -> Iterator[RawRow]:
    yield from head
    yield from rest


def _batches(rows: Iterator[RawRow], size: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[RawRow]]:
    """Lists of ``size`` rows, or fewer when their text (``RawRow.size``) reaches ``max_bytes``."""
    batch: list[RawRow] = []
    held = 0
    for r in rows:
        batch.append(r)
        held += r.size
        if len(batch) >= size or held >= max_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


#: Leaf columns holding long texts (message contents, raw input lines) and one value per record.
_TEXT_LEAVES = ("content", "raw")
_UNIQUE_LEAVES = ("id", "source_row")


def write_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options of an ingest table: zstd, and no min/max statistics or dictionary for the texts.

    Min/max of long texts prune nothing, and a dictionary of them (or of ids and row numbers, one per
    record) overflows at once and falls back to plain: together 10-15 % of the write time, for the
    same file size. The other columns (roles, sources, scores) keep both.
    """
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    leaves = [c.path for c in pq.read_metadata(pa.BufferReader(buf.getvalue())).schema]
    last = {p: p.rsplit(".", 1)[-1] for p in leaves}
    stats = [p for p in leaves if last[p] not in _TEXT_LEAVES]
    return {
        "compression": "zstd",
        "write_statistics": stats,
        "use_dictionary": [p for p in stats if last[p] not in _UNIQUE_LEAVES],
    }


class _Writers:
    """Streaming Parquet writers of one unit (records, quarantine, duplicates) in its staging folder.

    With ``background``, each batch is written on a writer thread while the next one is prepared
    (at most one batch pending); ``close`` waits for it and raises its error, if any.
    """

    def __init__(self, folder: Path, kind: str, background: bool = False) -> None:
        self.folder = folder
        self.specs = {kind: SCHEMAS[kind], "quarantine": QUARANTINE_SCHEMA, "duplicates": DUPLICATE_SCHEMA}  # type: ignore[index]
        self.kind = kind
        self.open: dict[str, pq.ParquetWriter] = {}
        self.behind = Behind(enabled=background)

    def _put(self, name: str, table: pa.Table | None) -> None:
        if table is None or table.num_rows == 0:
            return
        if name not in self.open:
            self.open[name] = pq.ParquetWriter(
                self.folder / f"{name}.parquet", self.specs[name], **write_options(self.specs[name])
            )
        self.open[name].write_table(table)

    def _write(self, records: pa.Table | None, quarantine: pa.Table | None, dups: pa.Table | None) -> None:
        self._put(self.kind, records)
        self._put("quarantine", quarantine)
        self._put("duplicates", dups)

    def write(
        self, records: pa.Table | None, quarantine: list[dict[str, Any]], dups: list[dict[str, Any]]
    ) -> None:
        rows = [
            pa.Table.from_pylist(r, schema=self.specs[name]) if r else None
            for name, r in (("quarantine", quarantine), ("duplicates", dups))
        ]
        self.behind.submit(self._write, records, *rows)

    def close(self) -> None:
        self.behind.wait()
        self.behind.shutdown()
        for w in self.open.values():
            w.close()
        self.open.clear()

    def abort(self) -> None:
        self.behind.drain()
        self.behind.shutdown()
        for w in self.open.values():
            with contextlib.suppress(Exception):  # best effort while failing anyway
                w.close()
        self.open.clear()


__all__ = ["IngestOptions", "SourceError", "UnitResult", "ingest_paths"]
