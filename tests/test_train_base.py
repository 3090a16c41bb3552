"""The trainers' shared base (training/base.py): what each method keeps, split loading, resume."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.training import rm_config, sft_config


def test_method_trainers_keep_only_their_loss_metrics_and_hooks():
    from training.base import ShardTrainer
    from training.rescue import RescueTrainer
    from training.rm import RewardTrainer
    from training.sft import SFTTrainer

    shared = {"_get_train_sampler", "evaluate", "run", "train", "count_trained"}  # the base's, once
    for cls in (SFTTrainer, RescueTrainer, RewardTrainer):
        assert issubclass(cls, ShardTrainer)
        assert {"compute_loss", "eval_metrics"} <= set(vars(cls)) and not shared & set(vars(cls))
    assert SFTTrainer.trained_key == "samples_trained" and RewardTrainer.trained_key == "pairs_trained"


def test_load_data_refuses_an_empty_train_split_and_skips_a_missing_eval_split(real_shards, minilm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec
    from training.base import load_data
    from training.rm import _tokenizer, load_pairs

    tok = _tokenizer(ModelSpec(str(minilm)), 48)

    def data(**kw):
        cfg = rm_config(real_shards, minilm, tmp_path, **kw)
        load = lambda split, limit, held_out: load_pairs(  # noqa: E731
            cfg.shards, split, tok, 48, "truncate" if held_out else cfg.overlong, limit
        )
        return load_data(cfg, "rm", "pairs", load)

    both = data(max_train_samples=6, max_eval_samples=5)
    assert len(both.train) == 6 and len(both.eval) == 5
    assert both.train_report["total"] == 6 and both.eval_report["total"] == 5
    assert data(max_train_samples=6, eval_split="test").eval is None  # the build has no such split
    with pytest.raises(ValueError, match=r"no rm/train pairs left to train on"):
        data(max_train_samples=0)


@pytest.mark.slow
def test_a_resumed_run_continues_as_the_uninterrupted_run(real_shards, tiny_lm, tmp_path):  # noqa: F811
    """Two steps, a checkpoint, then resume to three: the third step sees the batch the uninterrupted
    run saw (same sampler order, optimizer state restored) and only its own samples are counted."""
    from training.sft import train

    # a constant learning rate: a decaying schedule depends on max_steps, which differs between the runs
    opts = dict(
        max_train_samples=16, eval_split="", save_strategy="steps", save_steps=2, lr_scheduler_type="constant"
    )
    whole = train(sft_config(real_shards, tiny_lm, tmp_path / "whole", max_steps=3, **opts))
    out = tmp_path / "cut"
    train(sft_config(real_shards, tiny_lm, out, max_steps=2, **opts))
    assert (out / "checkpoint-2" / "CHECKPOINT_COMPLETE").exists()
    (out / "checkpoint-3").mkdir()  # a save that was killed half-way: never resumed from
    resumed = train(sft_config(real_shards, tiny_lm, out, max_steps=3, resume_from_checkpoint="last", **opts))
    assert resumed["global_step"] == 3 and resumed["samples_trained"] == 4  # one step of 4 rows
    losses = lambda r: {h["step"]: h["loss"] for h in r["log_history"] if "loss" in h}  # noqa: E731
    assert losses(resumed)[3] == pytest.approx(losses(whole)[3], rel=1e-4)
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3]
