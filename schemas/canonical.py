"""Arrow schemas of the canonical kinds: sft, pair and ranking.

Every record carries the same provenance columns so that any score, weight or
drop reason can be traced back to the file and row it came from.

Common columns
--------------
id            stable content hash of the record (see ``schemas.ids``); the same
              content gives the same id on every machine and every run.
source        short dataset name (by default the input file's stem, or ``--source``).
source_file   path of the input file as given to ``curate ingest``.
source_row    0-based row number inside that file (the line for JSONL, the array
              index for JSON, the record index for Parquet/CSV).
ingest_run    id of the ingest run that wrote the record.
reader        name of the reader that normalised it (``alpaca``, ``hh``, ...).
meta          JSON object (as text) with fields of the input that have no
              canonical home (tools, labels, model names ...). ``{}`` when empty.

sft
---
messages      list of {role, content}; role is one of system|user|assistant|tool.
              The conversation ends with an assistant turn.

pair
----
prompt        messages up to and including the last user turn (may contain
              earlier assistant turns for multi-turn dialogue).
chosen        the preferred final assistant turn(s), as messages.
rejected      the dispreferred final assistant turn(s), as messages.
strength      optional annotator probability that ``chosen`` is better, in
              [0.5, 1.0]; null for a hard label (e.g. HH-RLHF).

ranking
-------
prompt        as for pair.
candidates    list of {content, grade, is_reference, meta}; a higher grade is
              better and equal grades are ties (a partial order). Ties never
              become pairs.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

SCHEMA_VERSION = "1.0"

Kind = Literal["sft", "pair", "ranking"]
KINDS: tuple[Kind, ...] = ("sft", "pair", "ranking")
ROLES = ("system", "user", "assistant", "tool")

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
CANDIDATE = pa.struct(
    [
        ("content", pa.string()),
        ("grade", pa.int32()),
        ("is_reference", pa.bool_()),
        ("meta", pa.string()),
    ]
)

_COMMON_HEAD = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
]
_COMMON_TAIL = [
    pa.field("meta", pa.string(), nullable=False),
    pa.field("source_file", pa.string(), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
    pa.field("ingest_run", pa.string(), nullable=False),
    pa.field("reader", pa.string(), nullable=False),
]


def _schema(body: list[pa.Field], kind: Kind) -> pa.Schema:
    return pa.schema(
        _COMMON_HEAD + body + _COMMON_TAIL,
        metadata={"curate.kind": kind, "curate.schema_version": SCHEMA_VERSION},
    )


SFT_SCHEMA = _schema([pa.field("messages", MESSAGES, nullable=False)], "sft")
PAIR_SCHEMA = _schema(
    [
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        pa.field("strength", pa.float64(), nullable=True),
    ],
    "pair",
)
RANKING_SCHEMA = _schema(
    [
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("candidates", pa.list_(CANDIDATE), nullable=False),
    ],
    "ranking",
)

SCHEMAS: dict[Kind, pa.Schema] = {"sft": SFT_SCHEMA, "pair": PAIR_SCHEMA, "ranking": RANKING_SCHEMA}

#: A row that could not be read or failed validation. Nothing is lost: the raw
#: text is kept verbatim (decoded with replacement if it was not valid UTF-8).
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("reader", pa.string()),
        pa.field("ingest_run", pa.string()),
    ],
    metadata={"curate.kind": "quarantine", "curate.schema_version": SCHEMA_VERSION},
)

#: An input row whose content is already in the store (same id). Kept as a
#: pointer, never silently dropped.
DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("ingest_run", pa.string()),
    ],
    metadata={"curate.kind": "duplicate", "curate.schema_version": SCHEMA_VERSION},
)

#: One row per input file per ingest: the accounting that must reconcile,
#: rows_read == accepted + quarantined + duplicates.
INGEST_RUN_SCHEMA = pa.schema(
    [
        pa.field("ingest_run", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("file_sha256", pa.string()),
        pa.field("reader", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("options", pa.string()),
        pa.field("rows_read", pa.int64()),
        pa.field("records_out", pa.int64()),
        pa.field("accepted", pa.int64()),
        pa.field("quarantined", pa.int64()),
        pa.field("duplicates", pa.int64()),
        pa.field("started_at", pa.timestamp("us", tz="UTC")),
        pa.field("finished_at", pa.timestamp("us", tz="UTC")),
        pa.field("schema_version", pa.string()),
    ],
    metadata={"curate.kind": "ingest_run", "curate.schema_version": SCHEMA_VERSION},
)
