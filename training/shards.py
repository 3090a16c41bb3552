"""Reading curated shards (schemas/shards.py) for the trainers, and reporting over-long samples.

``load_split(shard_dir, consumer, split)`` checks the manifest (schema version, sha256 of every file
it reads, the consumer kind of each file) and returns one Arrow table. ``LengthReport`` counts the
samples a trainer truncated or dropped for length, so no sample is cut or lost silently.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.core.hashing import file_sha256
from schemas.shards import CONSUMERS, SHARD_SCHEMA_VERSION, SHARD_SCHEMAS

log = logging.getLogger(__name__)


class ShardError(ValueError):
    """A shard folder cannot be used by this trainer; the message names the file and the fix."""


def read_manifest(shard_dir: str | Path) -> dict:
    root = Path(shard_dir)
    path = root / "manifest.json"
    if not path.is_file():
        raise ShardError(f"{root}: no manifest.json; pass the folder of a build (store/curated/<name>)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from exc
    version = str(manifest.get("schema_version", ""))
    if version.split(".")[0] != SHARD_SCHEMA_VERSION.split(".")[0]:
        raise ShardError(
            f"{path}: shard schema_version {version or '(missing)'} is not supported by this trainer "
            f"(expects {SHARD_SCHEMA_VERSION}); rebuild the shards with this version of curate"
        )
    if not isinstance(manifest.get("shards"), list):
        raise ShardError(f"{path}: manifest has no 'shards' list")
    return manifest


def splits(shard_dir: str | Path, consumer: str) -> list[str]:
    """The splits the manifest lists for ``consumer``."""
    return sorted({s["split"] for s in read_manifest(shard_dir)["shards"] if s.get("consumer") == consumer})


def read_rows(
    shard_dir: str | Path, consumer: str, split: str, limit: int | None = None, verify: bool = True
) -> list[dict]:
    """The first ``limit`` rows (all if None) of ``consumer``/``split`` as dicts (see ``load_split``)."""
    table = load_split(shard_dir, consumer, split, verify=verify)
    return (table if limit is None else table.slice(0, limit)).to_pylist()


def load_split(shard_dir: str | Path, consumer: str, split: str = "train", verify: bool = True) -> pa.Table:
    """All shards of ``consumer``/``split`` as one table with the schema of schemas/shards.py."""
    if consumer not in CONSUMERS:
        raise ShardError(f"unknown consumer {consumer!r}; one of {', '.join(CONSUMERS)}")
    root = Path(shard_dir)
    manifest = read_manifest(root)
    entries = [s for s in manifest["shards"] if s.get("consumer") == consumer and s.get("split") == split]
    if not entries:
        have = sorted({f"{s.get('consumer')}/{s.get('split')}" for s in manifest["shards"]})
        kinds = sorted({s.get("consumer") for s in manifest["shards"]})
        hint = (
            f"this build has no {consumer} shards (it has {', '.join(kinds) or 'none'}): "
            f"use the trainer for that kind, or build with a {consumer} consumer"
            if consumer not in kinds
            else f"available: {', '.join(have)}"
        )
        raise ShardError(f"{root}: no {consumer}/{split} shards in manifest.json; {hint}")
    schema = SHARD_SCHEMAS[consumer]
    tables = []
    for entry in entries:
        path = (root / entry["path"]).resolve()
        if root.resolve() not in path.parents:
            raise ShardError(f"{root}/manifest.json: shard path {entry['path']!r} points outside the build")
        if not path.is_file():
            raise ShardError(f"{path}: listed in manifest.json but missing")
        if verify:
            digest = file_sha256(path)
            if digest != entry.get("sha256"):
                raise ShardError(
                    f"{path}: sha256 {digest[:16]}... does not match manifest.json "
                    f"({str(entry.get('sha256'))[:16]}...); the file changed after the build, rebuild it"
                )
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        kind = meta.get(b"curate.consumer", b"").decode()
        if kind and kind != consumer:
            raise ShardError(
                f"{path}: this is a {kind} shard, but the {consumer} trainer needs {consumer} shards "
                f"(use `curate train {_trainer_for(kind)}` for it)"
            )
        missing = [f.name for f in schema if f.name not in table.column_names]
        if missing:
            raise ShardError(f"{path}: not a {consumer} shard; missing column(s) {', '.join(missing)}")
        try:
            table = table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ShardError(f"{path}: columns do not match the {consumer} shard schema ({exc})") from exc
        for name in schema.names:
            nulls = table.column(name).null_count
            if nulls:
                raise ShardError(f"{path}: column {name!r} has {nulls} missing value(s); every row needs one")
        tables.append(table)
    return pa.concat_tables(tables)


def _trainer_for(kind: str) -> str:
    return {"sft": "sft", "rm": "rm", "ranking": "rescue"}.get(kind, kind)


@dataclass
class LengthReport:
    """Samples longer than ``max_length`` tokens: how many were truncated or dropped (with example ids)."""

    what: str
    max_length: int
    total: int = 0
    truncated: int = 0
    dropped: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    dropped_ids: list[str] = field(default_factory=list)

    def add(self, record_id: str, truncated: bool = False, dropped: bool = False) -> None:
        self.total += 1
        if dropped:
            self.dropped += 1
            if len(self.dropped_ids) < 20:
                self.dropped_ids.append(record_id)
        elif truncated:
            self.truncated += 1
            if len(self.truncated_ids) < 20:
                self.truncated_ids.append(record_id)

    def log(self) -> None:
        if self.truncated or self.dropped:
            log.warning(
                "%s: %d of %d samples exceed max_length=%d tokens: %d truncated, %d dropped "
                "(ids: truncated %s; dropped %s)",
                self.what,
                self.truncated + self.dropped,
                self.total,
                self.max_length,
                self.truncated,
                self.dropped,
                self.truncated_ids[:5],
                self.dropped_ids[:5],
            )

    def as_dict(self) -> dict:
        return {
            "max_length": self.max_length,
            "total": self.total,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "truncated_ids": self.truncated_ids,
            "dropped_ids": self.dropped_ids,
        }
