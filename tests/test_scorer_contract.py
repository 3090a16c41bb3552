"""The scorer contract: a scorer defined in one place (here, in this file) is listed by `curate score`, runs
on the shared runner (cache, resume), joins its view and is a contract column of the build."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from curation import catalog
from curation.scoring.contract import Scorer, unregister
from tests.fixtures.stores import build_store


@dataclass
class PromptWordsConfig:
    min_len: int = field(default=1, metadata={"help": "Count words of at least this many characters."})


class PromptWords(Scorer, register_now=False):  # registered by the fixture only
    """Words in the last user turn of each SFT record: the whole scorer, in one class."""

    name = "prompt_words"
    kinds = ("sft",)
    Config = PromptWordsConfig
    result_schema = pa.schema([("id", pa.string()), ("prompt_words", pa.int32())])
    views = {"scored_sft": None}
    chunk_size = 16
    in_all = False

    def items(self, records):
        from curation.scoring.texts import prompt_of_sft

        return [" ".join(m["content"] for m in prompt_of_sft(r["messages"])) for r in records]

    def compute(self, batch):
        n = [sum(len(w) >= self.config.min_len for w in text.split()) for text in batch]
        return pa.table({"prompt_words": pa.array(n, pa.int32())})


@pytest.fixture
def registered():
    from curation.scoring.contract import register

    register(PromptWords)
    yield PromptWords
    unregister("prompt_words")


@pytest.fixture
def sft_store(tmp_path, shared_data):
    return build_store(tmp_path, shared_data, hh=0, gsm8k=50)


def test_a_scorer_in_one_file_is_listed_run_cached_viewed_and_contracted(registered, sft_store, shared_data):
    import orjson
    from typer.testing import CliRunner

    from curation.builds.build import CONTRACT_COLUMNS
    from curation.cli import app
    from curation.scoring import SCORERS

    assert "prompt_words" in SCORERS
    assert CONTRACT_COLUMNS["scored_sft"]["prompt_words"] == "INTEGER"
    runner = CliRunner()
    args = ["score", "prompt_words", "--store", str(sft_store.root), "--no-progress"]
    res = runner.invoke(app, [*args, "--param", "min_len=4"])
    assert res.exit_code == 0, res.output
    assert "prompt_words" in res.output
    with contextlib.closing(catalog.connect(sft_store)) as con:
        rows = dict(con.sql("SELECT id, prompt_words FROM scored_sft").fetchall())
    # the same count straight from the GSM8K file the store was built from
    lines = (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:50]
    expected = sorted(sum(len(w) >= 4 for w in orjson.loads(x)["question"].split()) for x in lines)
    assert sorted(rows.values()) == expected and len(rows) == 50
    # the same data and params again: the result is up to date, nothing is computed
    res = runner.invoke(app, args + ["--param", "min_len=4"])
    assert res.exit_code == 0 and "True" in res.output  # up to date
    refused = runner.invoke(app, args + ["--param", "nope=1"])
    assert refused.exit_code == 1 and "does not take nope" in refused.output


def test_registry_generates_the_views_and_contract_of_the_builtin_scorers():
    from curation.builds.build import CONTRACT_COLUMNS
    from curation.scoring import RESULT_SCORERS, SCORERS

    assert list(RESULT_SCORERS) == [
        "length_bias",
        "reward_margin",
        "spurious_groups",
        "uncertainty",
        "semantic_dedup",
    ]
    assert set(SCORERS) == set(RESULT_SCORERS) | {"embeddings"}
    pairs = CONTRACT_COLUMNS["scored_pairs"]
    assert list(pairs)[:2] == ["reward_chosen", "reward_rejected"] and pairs["length_explained"] == "BOOLEAN"
    assert "feat_source" not in pairs and pairs["group_weight"] == "DOUBLE"
    assert CONTRACT_COLUMNS["scored_rankings"] == {"sem_cluster": "VARCHAR", "sem_representative": "BOOLEAN"}
    from curation.scoring.length_bias import LengthBias

    help_text = LengthBias.help()
    assert "methods.md" in help_text["ratio"] and "1.5" in help_text["ratio"]


def test_views_join_every_scorer_in_a_fresh_process(tmp_path):
    """The views load the whole registry themselves (no scorer module imported beforehand)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import contextlib, sys; from curation.core.store import Store; from curation import catalog; "
        "con = catalog.connect(Store(sys.argv[1])); "
        "print(sorted(r[0] for r in con.sql('DESCRIBE scored_pairs').fetchall()))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store")],
        capture_output=True,
        text=True,
        cwd=repo,
        env={"PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    for col in ("len_chosen", "margin", "group_weight", "sem_cluster", "length_explained"):
        assert f"'{col}'" in res.stdout
