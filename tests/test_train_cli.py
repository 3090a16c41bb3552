"""`curate train sft|rescue|rm`: flags, YAML config and errors, on real shards."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from curation import catalog
from curation.cli import app

runner = CliRunner()


def _summary(output: str) -> dict:
    return json.loads(output[output.index("{\n") :])


def test_train_help_lists_config_fields():
    res = runner.invoke(app, ["train", "rm", "--help"])
    assert res.exit_code == 0
    for flag in ("--shards", "--poe", "--group_dro", "--simcse_beta", "--learning_rate", "--config"):
        assert flag in res.output


def test_train_rm_from_yaml_with_flag_override(real_shards, minilm, tmp_path):  # noqa: F811
    cfg = tmp_path / "rm.yaml"
    cfg.write_text(
        f"shards: {real_shards}\nmodel: {minilm}\nmax_length: 32\nper_device_train_batch_size: 2\n"
        f"max_steps: 5\nmax_train_samples: 8\nmax_eval_samples: 8\nsave_strategy: 'no'\n"
        f"output_dir: {tmp_path / 'out'}\ndisable_tqdm: true\n"
    )
    res = runner.invoke(app, ["train", "rm", "--config", str(cfg), "--max_steps", "2"])
    assert res.exit_code == 0, res.output
    summary = _summary(res.output)
    assert summary["global_step"] == 2 and summary["pairs_trained"] == 4
    assert summary["metrics"]["eval_pairs"] == 8
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_train_sft_cli_and_wrong_kind(real_shards, tiny_lm, tmp_path):  # noqa: F811
    out = tmp_path / "sft"
    args = [
        "--shards",
        str(real_shards),
        "--model",
        str(tiny_lm),
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
    ]
    res = runner.invoke(
        app,
        [
            "train",
            "sft",
            *args,
            "--max_length",
            "64",
            "--max_train_samples",
            "4",
            "--eval_split",
            "none",
            "--use_cpu",
            "--disable_tqdm",
            "true",
        ],
    )
    assert res.exit_code == 0, res.output
    assert _summary(res.output)["global_step"] == 1
    bad = runner.invoke(
        app, ["train", "rm", "--shards", str(real_shards), "--model", str(tiny_lm), "--train_split", "nosuch"]
    )
    assert bad.exit_code == 1 and "no rm/nosuch shards" in bad.output
    typo = runner.invoke(
        app, ["train", "rm", "--shards", str(real_shards), "--model", str(tiny_lm), "--lerning_rate", "1"]
    )
    assert typo.exit_code != 0


def test_train_rm_on_a_real_build(real_store, minilm, tmp_path):  # noqa: F811
    """The curation builder's shards (curation/builds/build.py, bundled default policy) train as they are."""
    import shutil

    from curation.builds.build import build
    from curation.core.store import Store

    store = Store(tmp_path / "store")
    shutil.copytree(real_store.root / "ingest", store.root / "ingest")
    catalog.refresh(store)
    built = build(store, "default")
    out = tmp_path / "rm"
    args = ["--shards", str(built.path), "--model", str(minilm), "--output_dir", str(out), "--max_steps", "2"]
    res = runner.invoke(
        app,
        [
            "train",
            "rm",
            *args,
            "--max_length",
            "32",
            "--per_device_train_batch_size",
            "2",
            "--max_eval_samples",
            "8",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = _summary(res.output)
    assert summary["pairs_trained"] == 4 and summary["metrics"]["eval_pairs"] == 8
    assert summary["train_length_report"]["total"] > 1000
