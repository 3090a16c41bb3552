"""Ingest: read -> normalise -> hash -> validate -> dedup -> write, one committed unit per input file.

Each input file (with its reader and options) becomes one *unit* folder in the
store, written under ``.staging`` and renamed into ``ingest/`` when complete.
The unit key hashes the file's bytes, the reader, its options, the source name
and the schema version, so ingesting the same file twice adds nothing, and a
killed ingest resumes by skipping the units already committed.

Accounting per unit: every input row produces records or one quarantine row;
every record is accepted, quarantined (failed validation) or a duplicate
(its content id is already in the store or earlier in the file). So
``records_out + rows_failed == accepted + quarantined + duplicates``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from curation.ingest.readers import BY_NAME, DetectError, MappingReader, Reader, RowError, detect
from curation.ingest.sources import RawRow, SourceError, expand_paths, file_sha256, read_rows
from curation.ingest.validate import DEFAULT_MAX_CHARS, Validator
from curation.store import Store, StoreError, safe_name
from schemas import DUPLICATE_SCHEMA, INGEST_RUN_SCHEMA, QUARANTINE_SCHEMA, SCHEMA_VERSION, SCHEMAS, record_id

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
    batch_rows: int = BATCH_ROWS


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
    error: str | None = None  # the whole file could not be read (format unknown, not JSON ...)

    @property
    def reconciles(self) -> bool:
        failed_rows = self.rows_read - self.rows_converted
        return self.records_out + failed_rows == self.accepted + self.quarantined + self.duplicates


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


def _source_name(path: Path, opts: IngestOptions) -> str:
    if opts.source:
        return safe_name(opts.source, "source name")
    name = path.name
    for suffix in (".gz", ".jsonl", ".ndjson", ".json", ".parquet", ".csv"):
        name = name.removesuffix(suffix)
    name = name or "input"
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)[:100]


def _existing_ids(store: Store, kind: str) -> set[str]:
    files = store.files(f"ingest/*/{kind}.parquet")
    ids: set[str] = set()
    for f in files:
        ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


def ingest_paths(
    store: Store,
    paths: list[str],
    opts: IngestOptions | None = None,
    progress: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """Ingest files, globs or folders into ``store``; returns one accounting row per file."""
    opts = opts or IngestOptions()
    files = expand_paths(paths)
    results: list[UnitResult] = []
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    with store.writer_lock("ingest"):
        seen: dict[str, set[str]] = {}
        validators: dict[str, Validator] = {}
        for path in files:
            try:
                res = _ingest_file(store, path, opts, run_id, seen, validators)
            except (SourceError, DetectError) as exc:
                res = UnitResult(
                    source=_source_name(path, opts),
                    source_file=str(path),
                    reader=opts.reader,
                    kind=opts.kind or "?",
                    unit="",
                    error=str(exc),
                )
            results.append(res)
            if progress:
                progress(res)
        store.refresh_catalog()
    return results


def _ingest_file(
    store: Store,
    path: Path,
    opts: IngestOptions,
    run_id: str,
    seen: dict[str, set[str]],
    validators: dict[str, Validator],
) -> UnitResult:
    rows = read_rows(path, opts.format, opts.batch_rows)
    head: list[RawRow] = []
    for raw in rows:
        head.append(raw)
        if len(head) >= 20:
            break
    reader = make_reader(opts, [r.value for r in head if r.value is not None], str(path))
    source = _source_name(path, opts)
    sha = file_sha256(path)
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
    unit = f"{source}-{xxhash.xxh3_64_hexdigest(key_material.encode())}"
    res = UnitResult(source=source, source_file=str(path), reader=reader.name, kind=reader.kind, unit=unit)
    target = store.path("ingest", unit)
    if target.exists():
        prior = pq.read_table(target / "run.parquet").to_pylist()[0]
        for k in ("rows_read", "records_out", "accepted", "quarantined", "duplicates"):
            setattr(res, k, prior[k])
        res.skipped = True
        return res

    kind = reader.kind
    if kind not in seen:
        seen[kind] = _existing_ids(store, kind)
    if kind not in validators:
        validators[kind] = Validator(kind, opts.max_chars)
    ids, validator = seen[kind], validators[kind]
    started = dt.datetime.now(dt.UTC)
    staged = store.new_staging_dir()
    writers = _Writers(staged, kind)
    new_ids: set[str] = set()
    try:
        for batch in _batches(_chain(head, rows), opts.batch_rows):
            records: list[dict[str, Any]] = []
            quarantine: list[dict[str, Any]] = []
            dups: list[dict[str, Any]] = []
            for raw in batch:
                res.rows_read += 1
                if raw.error is not None:
                    quarantine.append(
                        _q(source, path, raw.row, "row", raw.error, raw.raw_text(), reader.name, run_id)
                    )
                    continue
                try:
                    out = reader.convert(raw.value)  # type: ignore[arg-type]
                except RowError as exc:
                    quarantine.append(
                        _q(source, path, raw.row, exc.field, exc.reason, raw.raw_text(), reader.name, run_id)
                    )
                    continue
                except RecursionError:
                    quarantine.append(
                        _q(
                            source,
                            path,
                            raw.row,
                            "row",
                            "nested too deeply",
                            raw.raw_text(),
                            reader.name,
                            run_id,
                        )
                    )
                    continue
                res.rows_converted += 1
                for rec in out:
                    res.records_out += 1
                    rid = record_id(kind, rec)
                    if rid in ids or rid in new_ids:
                        dups.append(
                            {
                                "id": rid,
                                "kind": kind,
                                "source": source,
                                "source_file": str(path),
                                "source_row": raw.row,
                                "ingest_run": run_id,
                            }
                        )
                        continue
                    new_ids.add(rid)
                    rec["id"] = rid
                    rec["_raw"] = raw
                    records.append(rec)
            bad = validator.failures(records)
            good = []
            for i, rec in enumerate(records):
                raw = rec.pop("_raw")
                if i in bad:
                    fld, reason = bad[i]
                    new_ids.discard(rec["id"])
                    quarantine.append(
                        _q(source, path, raw.row, fld, reason, raw.raw_text(), reader.name, run_id)
                    )
                else:
                    good.append(_finish(rec, source, path, raw.row, run_id, reader.name))
            writers.write(good, quarantine, dups)
            res.accepted += len(good)
            res.quarantined += len(quarantine)
            res.duplicates += len(dups)
        writers.close()
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
        store.commit_dir(staged, f"ingest/{unit}")
    except BaseException:
        writers.abort()
        raise
    ids |= new_ids
    return res


def _chain(head: list[RawRow], rest: Iterator[RawRow]) -> Iterator[RawRow]:
    yield from head
    yield from rest


def _batches(rows: Iterator[RawRow], size: int) -> Iterator[list[RawRow]]:
    batch: list[RawRow] = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _q(
    source: str, path: Path, row: int, fld: str, reason: str, raw: str, reader: str, run_id: str
) -> dict[str, Any]:
    return {
        "source": source,
        "source_file": str(path),
        "source_row": row,
        "field": fld,
        "reason": reason,
        "raw": raw,
        "reader": reader,
        "ingest_run": run_id,
    }


def _finish(
    rec: dict[str, Any], source: str, path: Path, row: int, run_id: str, reader: str
) -> dict[str, Any]:
    rec["source"] = source
    rec["source_file"] = str(path)
    rec["source_row"] = row
    rec["ingest_run"] = run_id
    rec["reader"] = reader
    rec["meta"] = orjson.dumps(rec.get("meta") or {}, default=str, option=orjson.OPT_SORT_KEYS).decode()
    return rec


class _Writers:
    """Streaming Parquet writers of one unit (records, quarantine, duplicates) in its staging folder."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder = folder
        self.specs = {kind: SCHEMAS[kind], "quarantine": QUARANTINE_SCHEMA, "duplicates": DUPLICATE_SCHEMA}  # type: ignore[index]
        self.kind = kind
        self.open: dict[str, pq.ParquetWriter] = {}

    def _put(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        schema = self.specs[name]
        if name not in self.open:
            self.open[name] = pq.ParquetWriter(self.folder / f"{name}.parquet", schema, compression="zstd")
        self.open[name].write_table(pa.Table.from_pylist(rows, schema=schema))

    def write(
        self, records: list[dict[str, Any]], quarantine: list[dict[str, Any]], dups: list[dict[str, Any]]
    ) -> None:
        self._put(self.kind, records)
        self._put("quarantine", quarantine)
        self._put("duplicates", dups)

    def close(self) -> None:
        for w in self.open.values():
            w.close()
        self.open.clear()

    def abort(self) -> None:
        for w in self.open.values():
            with contextlib.suppress(Exception):  # best effort while failing anyway
                w.close()
        self.open.clear()


__all__ = ["IngestOptions", "SourceError", "UnitResult", "ingest_paths"]
