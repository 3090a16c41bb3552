"""Shared fixtures for the build, explain and report tests: a store ingested from subsets of the real
datasets and scored with the real scorers that are installed (imported by those test modules)."""

from __future__ import annotations

import gzip
import importlib
import shutil
from pathlib import Path

import pytest

#: scorers the shared fixture runs when the scoring package provides them. The embedding-based ones
#: (spurious_groups, reward_margin) ran for many minutes on these subsets on the shared 2-core box;
#: tests/test_build_groups.py runs spurious_groups on a small subset instead.
WANTED_SCORERS = ("length_bias",)


def subset_lines(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` lines of a real JSONL(.gz) file, written as plain JSONL (data is never altered)."""
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt", encoding="utf-8") as fh, open(dst, "w", encoding="utf-8") as out:
        for i, line in enumerate(fh):
            if i >= n:
                break
            out.write(line)
    return dst


def ingest(store, paths: list[Path]) -> None:
    from curation.ingest.dedup import mark_near_duplicates
    from curation.ingest.pipeline import IngestOptions, ingest_paths

    results = ingest_paths(store, [str(p) for p in paths], IngestOptions())
    assert not [r.error for r in results if r.error]
    with store.writer_lock("near-dedup"):
        mark_near_duplicates(store, sorted({r.kind for r in results}))


def available_scorers() -> list[str]:
    """The wanted scorers whose modules import (the scoring package is built in parallel)."""
    try:
        from curation.scoring import SCORERS
    except ImportError:
        return []
    out = []
    for name in WANTED_SCORERS:
        try:
            importlib.import_module(SCORERS[name])
        except (ImportError, KeyError):
            continue
        out.append(name)
    return out


def score(store, names: list[str]) -> list[str]:
    from curation.scoring import run_scorer

    for name in names:
        run_scorer(store, name)
    return names


@pytest.fixture(scope="session")
def real_store_template(tmp_path_factory, shared_data):
    """Real subsets: 400 HH-RLHF pairs (+ the 300 ShareGPT pairs), Alpaca SFT, the toy chat file with
    its format errors (quarantine), 200 GSM8K multi-solution rankings; scored with the real scorers."""
    from curation.core.store import Store

    tmp = tmp_path_factory.mktemp("real_inputs")
    hh = subset_lines(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", tmp / "hh-harmless.jsonl", 400)
    gsm = subset_lines(
        shared_data / "gsm8k" / "example_model_solutions.jsonl", tmp / "gsm8k-solutions.jsonl", 200
    )
    store = Store(tmp_path_factory.mktemp("real") / "store")
    ingest(
        store,
        [
            hh,
            shared_data / "llama-factory" / "dpo_en_demo.json",
            shared_data / "llama-factory" / "alpaca_en_demo.json",
            shared_data / "openai-cookbook" / "toy_chat_fine_tuning.jsonl",
            gsm,
        ],
    )
    scorers = available_scorers()
    score(store, scorers)
    return store, scorers


@pytest.fixture
def real_store(real_store_template, tmp_path):
    """A private copy of the scored real store (tests may build into it)."""
    from curation.core.store import Store

    template, scorers = real_store_template
    dst = tmp_path / "store"
    shutil.copytree(template.root, dst, ignore=shutil.ignore_patterns(".lock", ".staging", "curated"))
    return Store(dst), scorers
