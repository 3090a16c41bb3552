"""Canonical record kinds (Arrow schemas, versioned) and stable content ids."""

from schemas.canonical import (
    CANDIDATE,
    DUPLICATE_SCHEMA,
    INGEST_RUN_SCHEMA,
    KINDS,
    MESSAGE,
    MESSAGES,
    PAIR_SCHEMA,
    QUARANTINE_SCHEMA,
    RANKING_SCHEMA,
    ROLES,
    SCHEMA_VERSION,
    SCHEMAS,
    SFT_SCHEMA,
    Kind,
)
from schemas.ids import content_key, prompt_text, record_id, text_id

__all__ = [
    "CANDIDATE",
    "DUPLICATE_SCHEMA",
    "INGEST_RUN_SCHEMA",
    "KINDS",
    "MESSAGE",
    "MESSAGES",
    "PAIR_SCHEMA",
    "QUARANTINE_SCHEMA",
    "RANKING_SCHEMA",
    "ROLES",
    "SCHEMA_VERSION",
    "SCHEMAS",
    "SFT_SCHEMA",
    "Kind",
    "content_key",
    "prompt_text",
    "record_id",
    "text_id",
]
