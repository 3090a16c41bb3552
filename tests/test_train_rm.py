"""Reward-model trainer: shard checks, the PoE/DRO loss wiring, and short real training runs on HH pairs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from curation.core.losses import bradley_terry_loss
from tests.shard_fixtures import real_shards, real_store  # noqa: F401 (fixtures)
from training.shards import ShardError, load_split


def rm_config(shards, minilm, out, **kw):
    from training.rm import RMConfig

    base = dict(
        shards=str(shards),
        model=str(minilm),
        output_dir=str(out),
        max_length=48,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        max_eval_samples=24,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return RMConfig(**base)


def test_loader_checks_kind_hash_and_version(real_shards, tmp_path):  # noqa: F811
    table = load_split(real_shards, "rm", "train")
    assert table.num_rows > 1000 and set(table.column("flipped").to_pylist()) == {True, False}
    with pytest.raises(ShardError, match="no ranking/nosuchsplit shards.*available: ranking/eval"):
        load_split(real_shards, "ranking", "nosuchsplit")
    bad = tmp_path / "bad"
    shutil.copytree(real_shards, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    # a file listed as rm that is really an sft shard is refused by its kind
    sft_entry = next(s for s in manifest["shards"] if s["consumer"] == "sft" and s["split"] == "train")
    rm_entry = next(s for s in manifest["shards"] if s["consumer"] == "rm" and s["split"] == "train")
    rm_entry["path"], rm_entry["sha256"] = sft_entry["path"], sft_entry["sha256"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="this is a sft shard.*curate train sft"):
        load_split(bad, "rm", "train")
    # a changed file fails its sha256
    with open(bad / sft_entry["path"], "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ShardError, match="sha256"):
        load_split(bad, "sft", "train")
    manifest["schema_version"] = "2.0"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="schema_version 2.0"):
        load_split(bad, "sft", "train")
    only_sft = tmp_path / "only_sft"
    only_sft.mkdir()
    manifest["schema_version"] = "1.0"
    manifest["shards"] = [sft_entry]
    (only_sft / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="has no rm shards \\(it has sft\\)"):
        load_split(only_sft, "rm", "train")


def test_left_truncation_keeps_response_and_is_reported(real_shards, minilm):  # noqa: F811
    from curation.core.models import ModelSpec
    from training.rm import _tokenizer, load_pairs

    tok = _tokenizer(ModelSpec(str(minilm)), 48)
    ds, report = load_pairs(str(real_shards), "eval", tok, 48, "truncate", 40)
    assert report.total == 40 and report.truncated > 0 and report.dropped == 0
    assert all(len(x["chosen_ids"]) <= 48 for x in ds.items)
    first = load_split(real_shards, "rm", "eval").slice(0, 40).to_pylist()
    # the last tokens are the end of the response, followed by [SEP]
    for row, item in zip(first, ds.items, strict=True):
        end = tok(row["chosen"][-1]["content"], add_special_tokens=False)["input_ids"][-5:]
        assert item["chosen_ids"][-6:-1] == end and item["chosen_ids"][0] == tok.cls_token_id
    dropped_ds, dropped = load_pairs(str(real_shards), "eval", tok, 48, "drop", 40)
    assert dropped.dropped == report.truncated and len(dropped_ds) == 40 - report.truncated


def test_poe_sum_weights_margin_and_group_dro_in_the_loss(real_shards, minilm, tmp_path):  # noqa: F811
    from curation.core.models import ModelSpec, load_sequence_classifier
    from training.rm import PairCollator, RewardTrainer, _tokenizer, load_pairs

    cfg = rm_config(real_shards, minilm, tmp_path, poe=True, poe_noise_std=0.0, group_dro=True)
    spec = ModelSpec(str(minilm))
    tok = _tokenizer(spec, 48)
    ds, _ = load_pairs(str(real_shards), "train", tok, 48, "truncate", 8)
    model = load_sequence_classifier(spec, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    trainer = RewardTrainer(
        model=model,
        args=cfg,
        train_dataset=ds,
        data_collator=PairCollator(tok.pad_token_id),
        rm_config=cfg,
        n_groups=2,
    )
    opt = trainer.create_optimizer()
    assert opt.param_groups[-1]["lr"] == pytest.approx(3e-4)  # bias expert: 3x the main learning rate
    batch = PairCollator(tok.pad_token_id)(ds.items)
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        bias = trainer.bias_expert(batch["input_ids"], batch["attention_mask"])
    per_pair = bradley_terry_loss(r[:8] + bias[:8], r[8:] + bias[8:], batch["margin"], batch["soft_label"])
    per_pair = per_pair * batch["weight"]
    g = batch["group"]
    losses = torch.stack([per_pair[g == k].mean() if (g == k).any() else torch.tensor(0.0) for k in (0, 1)])
    q = 0.5 * torch.exp(0.01 * losses)
    q = q / q.sum()
    assert loss.item() == pytest.approx((q * losses).sum().item(), rel=1e-4)
    assert trainer.dro_q.tolist() == pytest.approx(q.tolist(), rel=1e-5)
    assert set(batch["margin"].tolist()) != {0.0} or set(batch["weight"].tolist()) != {1.0}


def test_train_rm_loss_goes_down_and_metrics(real_shards, minilm, tmp_path):  # noqa: F811
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.rm import evaluate, train

    out = tmp_path / "rm"
    cfg = rm_config(
        real_shards, minilm, out, max_train_samples=8, num_train_epochs=5, poe=True, simcse_beta=0.1
    )
    result = train(cfg)
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result["pairs_trained"] == 40 and result["pairs_per_second"] > 0
    assert result["train_length_report"]["total"] == 8
    m = result["metrics"]
    assert m["eval_pairs"] == 24 and 0 <= m["eval_accuracy"] <= 1
    assert m["eval_worst_group_accuracy"] <= min(m["eval_accuracy_group_0"], m["eval_accuracy_group_1"])
    assert -1 <= m["eval_spearman_reward_length"] <= 1
    assert (out / "log.jsonl").read_text().count('"loss"') == 10
    # plain transformers loads it; the PoE bias expert is not part of it
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(out)  # a reward_margin backend truncates the same way
    assert tok.truncation_side == "left" and tok.model_max_length == 48
    assert not (out / "bias_expert.safetensors").exists()
    again = evaluate(out, real_shards, split="eval", limit=24)
    assert again["accuracy"] == pytest.approx(m["eval_accuracy"])


@pytest.mark.slow
def test_checkpoint_and_resume(real_shards, minilm, tmp_path):  # noqa: F811
    from training.rm import train

    out = tmp_path / "rm"
    first = train(
        rm_config(
            real_shards,
            minilm,
            out,
            max_steps=2,
            save_strategy="steps",
            save_steps=2,
            poe=True,
            group_dro=True,
            max_train_samples=16,
            eval_split="",
        )
    )
    ck = out / "checkpoint-2"
    assert first["global_step"] == 2 and (ck / "bias_expert.safetensors").exists()
    assert len(json.loads((ck / "curate_rm_state.json").read_text())["dro_q"]) == 2
    second = train(
        rm_config(
            real_shards,
            minilm,
            out,
            max_steps=3,
            save_strategy="no",
            poe=True,
            group_dro=True,
            eval_split="",
            max_train_samples=16,
            resume_from_checkpoint="last",
        )
    )
    assert second["global_step"] == 3 and second["pairs_trained"] == 4  # one more step of 4 pairs
