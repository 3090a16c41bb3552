"""Shared fixtures: offline settings, the real data folder, stores, and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
#: Real public datasets (see ../shared/data/README.md); the bundled demo copy is the fallback.
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO = REPO / "curation" / "data" / "demo"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real datasets not found at {SHARED} (set CURATE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return DEMO


@pytest.fixture
def store(tmp_path):
    from curation.core.store import Store

    return Store(tmp_path / "store")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny Llama causal LM with a BPE tokenizer trained on real GSM8K and Alpaca text."""
    from tests.tiny_models import build_tiny_causal_lm, gsm8k_and_alpaca_texts

    data = SHARED if SHARED.is_dir() else DEMO
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), gsm8k_and_alpaca_texts(data))


@pytest.fixture(scope="session")
def minilm() -> Path:
    from curation.core.models import bundled_minilm_path

    return bundled_minilm_path()
