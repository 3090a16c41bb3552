"""Sentence embeddings, computed once per distinct text and shared by every scorer.

The cache is keyed by the text's content hash (``schemas.ids.text_id``), so the
same prompt in a pair and in an SFT record, or in two scorers, is embedded once.
Vectors are L2-normalised float32 (cosine = dot product). Texts longer than the
encoder's window lose their START (left truncation), as for reward models.
The default encoder is the bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from curation.core.models import (
    DEFAULT_ENCODER,
    ModelSpec,
    bf16_supported,
    describe,
    load_sentence_encoder,
    pick_device,
)
from curation.core.options import option
from curation.scoring.base import ScoreSummary, add_stats
from curation.scoring.cache import CacheSpec, CacheStats, cached_compute
from curation.scoring.contract import Scorer, ScoreRun
from curation.scoring.task import ChunkTask
from curation.scoring.texts import last_user_turn, plain_render, prompt_of_sft, response_text
from schemas.ids import text_id

if TYPE_CHECKING:
    from curation.core.store import Store

VERSION = "1"
ALL_KINDS = ("pair", "sft", "ranking")


class EmbedTask(ChunkTask):
    """The encoder as a chunk task: picklable settings; the model loads in the process that computes."""

    def __init__(self, spec: ModelSpec, device: str | None, bf16: bool, max_seq_length: int, batch_size: int):
        self.spec, self.device, self.bf16 = spec, device, bf16
        self.max_seq_length, self.batch_size = max_seq_length, batch_size

    def load(self):
        model = load_sentence_encoder(self.spec, pick_device(self.device))
        model.max_seq_length = self.max_seq_length
        model.tokenizer.truncation_side = "left"
        return model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import contextlib

        import torch

        device = pick_device(self.device)
        ctx = (
            torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
            if self.bf16
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), ctx:
            vecs = self.model().encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)

    def __call__(self, texts: list[str]) -> pa.Table:
        return pa.table({"vector": pa.array(list(self.encode(texts)), pa.list_(pa.float32()))})


class Embedder:
    """An encoder plus the store cache it writes to."""

    def __init__(
        self,
        store: Store,
        model: str = DEFAULT_ENCODER,
        max_seq_length: int = 256,
        batch_size: int = 64,
        device: str | None = None,
        bf16: bool | None = None,
        progress: bool = True,
        trust_remote_code: bool = False,
        allow_network: bool = False,
        chunk_size: int = 1024,
    ) -> None:
        self.store = store
        self.chunk_size = chunk_size
        self.spec_model = ModelSpec(model, trust_remote_code, allow_network)
        self.fingerprint = describe(self.spec_model)["fingerprint"]
        self.device = pick_device(device)
        self.bf16 = bf16_supported(self.device) if bf16 is None else bf16
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.progress = progress
        self.task = EmbedTask(self.spec_model, device, self.bf16, max_seq_length, batch_size)
        self.stats = CacheStats()

    @property
    def cache(self) -> CacheSpec:
        params = {
            "max_seq_length": self.max_seq_length,
            "normalize": True,
            "truncation": "left",
            "bf16": self.bf16,
        }
        return CacheSpec("embeddings", VERSION, self.fingerprint, params)

    def model(self):
        return self.task.model()

    def encode_uncached(self, texts: Sequence[str]) -> np.ndarray:
        return self.task.encode(texts)

    def embed(self, texts: Sequence[str], desc: str = "embeddings") -> np.ndarray:
        """(len(texts), dim) normalised embeddings; only texts never embedded before are encoded
        (on the Ray workers inside ``curation.scoring.parallel.workers(n)``)."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        keys = [text_id(t) for t in texts]
        schema = pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32()))])
        table, stats = cached_compute(
            self.store,
            self.cache,
            keys,
            schema=schema,
            order=[len(t) for t in texts],
            chunk_size=self.chunk_size,
            progress=self.progress,
            desc=desc,
            task=self.task,
            items=list(texts),
        )
        self.stats.add(stats)
        col = table.column("vector").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(len(texts), -1)


# ------------------------------------------------------------- text views
def prompt_texts(kind: str, records: list[dict]) -> list[str]:
    """The prompt of each record, rendered plainly (what semantic dedup and clusters compare)."""
    if kind == "sft":
        return [plain_render(prompt_of_sft(r["messages"])) for r in records]
    return [plain_render(r["prompt"]) for r in records]


def pair_response_texts(records: list[dict]) -> tuple[list[str], list[str]]:
    """(last user turn + chosen response, last user turn + rejected response) per pair."""
    chosen, rejected = [], []
    for r in records:
        q = last_user_turn(r["prompt"])
        chosen.append(f"{q}\n{response_text(r['chosen'])}")
        rejected.append(f"{q}\n{response_text(r['rejected'])}")
    return chosen, rejected


@dataclass
class EmbeddingsConfig:
    kinds: Sequence[str] = option(ALL_KINDS, "Record kinds to read: a list or 'pair,sft'.")
    model: str = option(DEFAULT_ENCODER, "Sentence encoder (the bundled MiniLM).")
    device: str | None = option(None, "auto (None), cpu, cuda, cuda:1 ...")
    trust_remote_code: bool = option(False, "Allow the encoder's own code.")
    allow_network: bool = option(False, "Let a hub id be downloaded.")

    def embedder(self, store: Store, progress: bool, **kw: Any) -> Embedder:
        """The Embedder of these settings (``kw``: Embedder's other options)."""
        opts = {"trust_remote_code": self.trust_remote_code, "allow_network": self.allow_network}
        return Embedder(store, self.model, device=self.device, progress=progress, **opts, **kw)


class Embeddings(Scorer):
    """Embed the texts the other scorers use (prompts of every kind, pair responses, SFT conversations):
    a per-record cache only (no result, no view)."""

    name = "embeddings"
    version = VERSION
    kinds = ALL_KINDS
    Config = EmbeddingsConfig
    in_all = False
    order = 60
    chunk_size = 1024

    def score(self, run: ScoreRun) -> None:
        emb = self.config.embedder(run.store, run.progress, chunk_size=run.chunk_size or self.chunk_size)
        for kind, records in run.by_kind.items():
            emb.embed(prompt_texts(kind, records), f"{kind} prompts")
            if kind == "pair":
                c, r = pair_response_texts(records)
                emb.embed(c + r, "pair responses")
            if kind == "sft":
                emb.embed([plain_render(r["messages"]) for r in records], "sft conversations")
        add_stats(run.summary, emb.stats)
        run.summary.key, run.summary.skipped = emb.cache.key, emb.stats.computed == 0


def run(store: Store, *, where: str | None = None, progress: bool = True, **config: Any) -> ScoreSummary:
    """Embed the texts of every record of ``kinds`` (``EmbeddingsConfig`` fields, and ``chunk_size``)."""
    return Embeddings.run_with(store, where=where, progress=progress, **config)
