"""Schemas of curated training shards and of their manifest.

A build writes ``curated/<name>/`` with::

    manifest.json
    sft/train-00000.parquet, sft/eval-00000.parquet, ...
    rm/train-00000.parquet, ...
    ranking/train-00000.parquet, ...

Every row carries every column: a weight of 1.0, a margin of 0.0, a soft label
of 0.0 and group 0 where nothing applies, never a missing value. Messages use
the canonical {role, content} structs, so TRL's trainers and
``datasets.load_dataset("parquet", data_files=...)`` read the sft and rm shards
as they are (conversational format: ``messages``; ``prompt``/``chosen``/``rejected``).

manifest.json (all keys always present)::

    {
      "schema_version": "1.0",            # SHARD_SCHEMA_VERSION
      "name": "<build name>",
      "policy_sha256": "...",             # hash of the policy file's canonical form
      "lineage_sha256": "...",            # hash of input units + scorer versions + policy
      "scorers": {"<scorer>": {"version": "...", "fingerprint": "..."}},
      "inputs": [{"unit": "...", "source_file": "...", "file_sha256": "..."}],
      "shards": [{"consumer": "rm", "split": "train", "path": "rm/train-00000.parquet",
                  "rows": 123, "sha256": "<hex of the file bytes>"}],
      "counts": {"<consumer>": {"<split>": {"<source>": n}}},
      "accounting": {...}                 # per input record: kept / filtered / duplicate / quarantined
    }
"""

from __future__ import annotations

import pyarrow as pa

from schemas.canonical import MESSAGES

SHARD_SCHEMA_VERSION = "1.0"
CONSUMERS = ("sft", "rm", "ranking")

SFT_SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("messages", MESSAGES, nullable=False),
        # per-sample loss weight (1.0 = neutral)
        pa.field("weight", pa.float64(), nullable=False),
        # UAL label smoothing epsilon for this sample (0.0 = plain cross-entropy)
        pa.field("label_smoothing", pa.float64(), nullable=False),
    ],
    metadata={"curate.consumer": "sft", "curate.shard_schema_version": SHARD_SCHEMA_VERSION},
)

RM_SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        # per-pair loss weight
        pa.field("weight", pa.float64(), nullable=False),
        # adaptive margin inside the sigmoid: -log sigma(r_c - r_r - margin)
        pa.field("margin", pa.float64(), nullable=False),
        # soft-label alpha: -(1-a) log sigma(d) - a log sigma(-d); 0.0 = hard label
        pa.field("soft_label", pa.float64(), nullable=False),
        # true when the build swapped chosen and rejected (suspected wrong label)
        pa.field("flipped", pa.bool_(), nullable=False),
        # spurious-feature group id for group DRO and per-group metrics (0 if none)
        pa.field("group", pa.int32(), nullable=False),
    ],
    metadata={"curate.consumer": "rm", "curate.shard_schema_version": SHARD_SCHEMA_VERSION},
)

RANKING_SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("prompt", MESSAGES, nullable=False),
        # candidate responses (assistant text)
        pa.field("candidates", pa.list_(pa.string()), nullable=False),
        # one grade per candidate; higher is better, equal grades are ties
        pa.field("grades", pa.list_(pa.int32()), nullable=False),
        # one flag per candidate: the reference answer (length-normalisation lambda 1.0, else 0.85)
        pa.field("is_reference", pa.list_(pa.bool_()), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ],
    metadata={"curate.consumer": "ranking", "curate.shard_schema_version": SHARD_SCHEMA_VERSION},
)

SHARD_SCHEMAS: dict[str, pa.Schema] = {
    "sft": SFT_SHARD_SCHEMA,
    "rm": RM_SHARD_SCHEMA,
    "ranking": RANKING_SHARD_SCHEMA,
}
