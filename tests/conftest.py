"""Shared fixtures: offline settings, the real data folder, stores, and tiny models.

The fixture modules of tests/fixtures/ are registered below (``pytest_plugins``); test modules import
plain helpers from them and never from one another.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.paths import DEMO, SHARED

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

pytest_plugins = [
    "tests.fixtures.prefect",
    "tests.fixtures.scoring",
    "tests.fixtures.shards",
    "tests.fixtures.stores",
]


def in_ci() -> bool:
    """True where the CI environment variable says so (.ci/run sets CI=true; GitHub Actions does too)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public datasets (../shared/data or $CURATE_SHARED_DATA). Missing: a failure in CI, where a
    skipped real-data test would hide that it never ran; a skip, with the reason, elsewhere."""
    if not SHARED.is_dir():
        reason = (
            f"real datasets not found at {SHARED}: put them at ../shared/data (see its README.md) "
            "or set CURATE_SHARED_DATA"
        )
        if in_ci():
            pytest.fail(f"{reason} (CI is set: tests that need them fail rather than skip)", pytrace=False)
        pytest.skip(reason)
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
    from tests.fixtures.tiny_models import build_tiny_causal_lm, gsm8k_and_alpaca_texts

    data = SHARED if SHARED.is_dir() else DEMO
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), gsm8k_and_alpaca_texts(data))


@pytest.fixture(scope="session")
def minilm() -> Path:
    from curation.core.models import bundled_minilm_path

    return bundled_minilm_path()
