"""Reward-model trainer: shard checks, the PoE/DRO loss wiring, and short real training runs on HH pairs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from curation.core.losses import bradley_terry_loss
from tests.fixtures.training import rm_config, rm_trainer
from training.shards import ShardError, load_split


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


def test_noisy_embedding_poe_sum_weights_margin_and_group_dro_in_the_loss(real_shards, minilm, tmp_path):  # noqa: F811
    from training.rm import PairCollator

    cfg = rm_config(
        real_shards,
        minilm,
        tmp_path,
        poe=True,
        poe_expert="noisy_embedding",
        poe_noise_std=0.0,
        group_dro=True,
    )
    trainer, tok, ds = rm_trainer(cfg, real_shards, 48, 8, n_groups=2, dropout=False)
    model = trainer.model
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
    assert m["eval_pairs"] == 24
    assert m["eval_worst_group_accuracy"] <= min(m["eval_accuracy_group_0"], m["eval_accuracy_group_1"])
    assert (out / "log.jsonl").read_text().count('"loss"') == 10
    # plain transformers loads it; the PoE bias expert is not part of it
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(out)  # a reward_margin backend truncates the same way
    assert tok.truncation_side == "left" and tok.model_max_length == 48
    assert not (out / "bias_expert.safetensors").exists()
    assert result["bias_expert"]["kind"] == "length" and result["bias_expert"]["warm_start"]["loss"] > 0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as fh:
        assert set(fh.keys()) == set(model.state_dict())  # the main model's weights and nothing else
    again = evaluate(out, real_shards, split="eval", limit=24)  # the saved model, scored again
    assert again["accuracy"] == pytest.approx(m["eval_accuracy"])
    assert again["spearman_reward_length"] == pytest.approx(m["eval_spearman_reward_length"], abs=1e-6)


@pytest.mark.slow
def test_checkpoint_and_resume(real_shards, minilm, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    from training.rm import train

    out = tmp_path / "rm"
    common = dict(poe=True, group_dro=True, max_train_samples=16, eval_split="")
    first = train(
        rm_config(real_shards, minilm, out, max_steps=2, save_strategy="steps", save_steps=2, **common)
    )
    ck = out / "checkpoint-2"
    assert first["global_step"] == 2 and (ck / "bias_expert.safetensors").exists()
    assert len(json.loads((ck / "curate_rm_state.json").read_text())["dro_q"]) == 2
    saved = load_file(str(ck / "bias_expert.safetensors"))
    assert set(saved) == {"scale", "net.weight"} and saved["net.weight"].abs().sum() > 0
    # the checkpoint holds the expert as joint training left it, not as the warm start fitted it
    raw = (saved["net.weight"][0] / saved["scale"]).tolist()
    assert raw == pytest.approx(list(first["bias_expert"]["weights"].values()))
    assert raw != pytest.approx(list(first["bias_expert"]["warm_start"]["weights"].values()), abs=1e-6)
    # a fresh trainer restores the length expert (weights and feature scale) from the checkpoint
    cfg = rm_config(real_shards, minilm, tmp_path / "x", **common)
    trainer, _, _ = rm_trainer(cfg, real_shards, 48, 16, n_groups=2)
    assert trainer.length_expert.net.weight.abs().sum() == 0
    assert trainer.load_extra_state(str(ck)) is True
    for k, v in trainer.length_expert.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    second = train(
        rm_config(
            real_shards, minilm, out, max_steps=3, save_strategy="no", resume_from_checkpoint="last", **common
        )
    )
    assert second["global_step"] == 3 and second["pairs_trained"] == 4  # one more step of 4 pairs
    assert second["bias_expert"]["warm_start"] is None  # resumed, not fitted again
    # a checkpoint of another expert is refused with the reason
    with pytest.raises(
        ValueError, match="bias_expert.safetensors: does not fit the --poe_expert noisy_embedding"
    ):
        train(
            rm_config(
                real_shards,
                minilm,
                out,
                max_steps=3,
                save_strategy="no",
                resume_from_checkpoint=str(ck),
                poe_expert="noisy_embedding",
                **common,
            )
        )


# ----------------------------------------------------------------------------- the length bias expert
@pytest.fixture(scope="module")
def alpaca_pairs(shared_data) -> list[dict]:
    """The pairs of the three real AlpacaEval annotation files, as the alpaca_eval reader converts them
    (ties and unjudged rows give no pair), ordered by record id."""
    from curation.ingest.readers import BY_NAME
    from curation.ingest.readers.base import RowError
    from schemas.ids import record_id

    reader = BY_NAME["alpaca_eval"]()
    pairs = {}
    for path in sorted((shared_data / "alpaca-eval").glob("*.annotations.json")):
        for row in json.loads(path.read_text()):
            try:
                records = list(reader.convert(row))
            except RowError:  # a tie or an unjudged row: ingest quarantines it
                continue
            for rec in records:
                keep = {k: rec[k] for k in ("prompt", "chosen", "rejected")}
                pairs[record_id("pair", rec)] = {"source": path.stem, **keep}
    return [{"id": k, **pairs[k]} for k in sorted(pairs)]


def alpaca_shards(pairs: list[dict], out, labels: str = "judge", limit: int | None = None):
    """rm shards (held out by instruction, 1 in 4 to eval) of the AlpacaEval pairs with clean shard columns.

    labels: 'judge' as the judge said; 'longer' / 'shorter': chosen is the longer / shorter response (by
    characters), a pure length signal in one direction.
    """
    from tests.fixtures.shards import write_shards

    rows = []
    for r in pairs[:limit]:
        chosen, rejected = r["chosen"], r["rejected"]
        longer = len(chosen[-1]["content"]) > len(rejected[-1]["content"])
        if labels != "judge" and longer != (labels == "longer"):
            chosen, rejected = rejected, chosen
        rows.append(
            {
                **r,
                "chosen": chosen,
                "rejected": rejected,
                "weight": 1.0,
                "margin": 0.0,
                "soft_label": 0.0,
                "flipped": False,
                "group": 0,
            }
        )
    return write_shards(out, {"rm": rows}, eval_every=4, split_key=lambda r: r["prompt"][-1]["content"])


def test_length_features_come_from_untruncated_responses(alpaca_pairs, minilm, tmp_path):
    from curation.core.length_features import FEATURE_NAMES, markdown_matrix, pair_length_features
    from curation.core.models import ModelSpec
    from training.rm import LengthExpert, PairCollator, _tokenizer, load_pairs

    shards = alpaca_shards(alpaca_pairs, tmp_path / "b", limit=80)
    tok = _tokenizer(ModelSpec(str(minilm)), 32)
    ds, report = load_pairs(str(shards), "train", tok, 32, "truncate", 40)
    assert report.truncated == 40  # every window is cut to 32 tokens ...
    rows = load_split(shards, "rm", "train").slice(0, 40).to_pylist()
    texts = [r[k][-1]["content"] for r in rows for k in ("chosen", "rejected")]
    n = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    md = markdown_matrix(texts)
    want = pair_length_features(n[0::2], n[1::2], md[0::2], md[1::2])
    got = PairCollator(tok.pad_token_id)(ds.items)["length_features"]
    assert got.shape == (40, len(FEATURE_NAMES))
    # ... but the features keep the whole responses' token counts: pairs of very different length differ
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    assert got[:, 0].abs().max() > 1.0 and len(set(got[:, 0].tolist())) > 30
    assert [it["len_chosen"] for it in ds.items] == n[0::2]
    # the expert's logit flips sign when the pair is swapped, linear or MLP
    for hidden in (0, 8):
        torch.manual_seed(1)
        expert = LengthExpert(len(FEATURE_NAMES), hidden)
        if not hidden:
            torch.nn.init.normal_(expert.net.weight)
        expert.set_scale(got)
        torch.testing.assert_close(expert(-got), -expert(got))
        assert expert(got).abs().min() > 0


def test_length_expert_logit_is_added_to_the_bradley_terry_logit(alpaca_pairs, minilm, tmp_path):
    from training.rm import LengthExpert, PairCollator

    shards = alpaca_shards(alpaca_pairs, tmp_path / "b", limit=60)
    cfg = rm_config(shards, minilm, tmp_path / "out", poe=True)
    assert cfg.poe_expert == "length"  # the default expert of --poe
    trainer, tok, ds = rm_trainer(cfg, shards, 48, 8, n_groups=1, dropout=False)
    model = trainer.model
    assert isinstance(trainer.length_expert, LengthExpert)
    opt = trainer.create_optimizer()
    assert opt.param_groups[-1]["lr"] == pytest.approx(3e-4)
    assert opt.param_groups[-1]["params"] == list(trainer.length_expert.parameters())
    fit = trainer.prepare_length_expert()
    assert fit["loss"] < math.log(2) and fit["train_accuracy"] > 0.5
    batch = PairCollator(tok.pad_token_id)(ds.items)
    model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        bias = trainer.length_expert(batch["length_features"])
    assert bias.abs().min() > 0  # fitted: it has an opinion on every pair
    joint = bradley_terry_loss(r[:8], r[8:], batch["margin"], batch["soft_label"], bias=bias)
    importance = batch["importance"]  # the resampling's inverse draw weights
    assert len(set(importance.tolist())) > 1
    assert loss.item() == pytest.approx((joint * importance).mean().item(), rel=1e-5)
    plain = bradley_terry_loss(r[:8], r[8:], batch["margin"], batch["soft_label"])
    assert abs(plain.mean().item() - loss.item()) > 1e-3
    model.eval()  # held-out losses are the main model's alone, unweighted
    assert trainer.compute_loss(model, batch).item() == pytest.approx(plain.mean().item(), rel=1e-4)


def test_resampling_by_residual_keeps_the_poe_objective_in_expectation(alpaca_pairs, minilm, tmp_path):
    """Pairs are drawn in proportion to w_i * residual_i and weighted back: for any per-pair losses the
    expected drawn loss is the PoE mean; pairs that length gets wrong are drawn far more often."""
    from curation.core.models import ModelSpec, load_sequence_classifier
    from training.common import SortedBucketSampler
    from training.rm import PairCollator, RewardTrainer, _tokenizer, load_pairs

    shards = alpaca_shards(alpaca_pairs, tmp_path / "b", limit=200)
    cfg = rm_config(shards, minilm, tmp_path / "out", poe=True)
    spec = ModelSpec(str(minilm))
    tok = _tokenizer(spec, 16)
    ds, _ = load_pairs(str(shards), "train", tok, 16, "truncate", None)
    for i, it in enumerate(ds.items):  # varied shard weights: the draw must account for them
        it["weight"] = 0.5 + (i % 3) * 0.5
    trainer = RewardTrainer(
        model=load_sequence_classifier(spec),
        args=cfg,
        train_dataset=ds,
        data_collator=PairCollator(tok.pad_token_id),
        n_groups=1,
    )
    trainer.prepare_length_expert()
    q = torch.tensor(trainer.poe_draw)
    imp = torch.tensor([it["importance"] for it in ds.items])
    w = torch.tensor([it["weight"] for it in ds.items])
    losses = torch.rand(len(ds), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(((q / q.sum()) * imp * w * losses).sum(), (w * losses).mean())
    with torch.no_grad():
        bias = trainer.length_expert(torch.tensor([it["length_features"] for it in ds.items]))
    wrong, right = q[bias < 0] / w[bias < 0], q[bias > 0] / w[bias > 0]
    assert len(wrong) and wrong.min() > right.max()  # drawn in proportion to the residual
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, SortedBucketSampler) and sampler.weights == trainer.poe_draw
    drawn = list(sampler)
    assert len(drawn) == len(ds) and len(set(drawn)) < len(ds)  # with replacement
    hard = set(torch.nonzero(bias < 0).flatten().tolist())
    assert sum(i in hard for i in drawn) / len(drawn) > 2 * len(hard) / len(ds)


@pytest.mark.parametrize("labels", ["longer", "shorter"])
def test_length_expert_learns_the_direction_of_a_pure_length_signal(alpaca_pairs, minilm, tmp_path, labels):
    """On real pairs relabelled so that length alone decides, the expert takes the whole cue, in its
    direction: fitted alone it orders every train pair, and joint training (cold start) moves it there too."""
    from training.rm import train

    shards = alpaca_shards(alpaca_pairs, tmp_path / "b", labels=labels, limit=120)
    sign = 1 if labels == "longer" else -1
    common = dict(max_length=32, max_train_samples=48, eval_split="", poe=True)
    warm = train(rm_config(shards, minilm, tmp_path / "warm", max_steps=1, **common))["bias_expert"]
    # labels follow characters, features count tokens: the two disagree on a few close pairs
    assert warm["kind"] == "length" and warm["warm_start"]["train_accuracy"] > 0.95
    assert warm["warm_start"]["loss"] < 0.25  # against log 2 = 0.69 for no opinion
    assert sign * warm["weights"]["log_length_ratio"] > 0 and sign * warm["weights"]["longer_sign"] > 0
    # without the warm start the expert starts at zero and learns the cue from the joint loss alone
    cold = train(
        rm_config(
            shards,
            minilm,
            tmp_path / "cold",
            max_steps=6,
            poe_warm_start=False,
            poe_lr_multiplier=100.0,
            **common,
        )
    )["bias_expert"]
    assert cold["warm_start"] is None
    assert sign * cold["weights"]["log_length_ratio"] > 0 and sign * cold["weights"]["longer_sign"] > 0


def test_pair_metrics_accuracy_where_the_shorter_response_is_preferred():
    from training.rm import chosen_longer_share, pair_metrics

    items = [
        {"group": 0, "flipped": False, "len_chosen": c, "len_rejected": r}
        for c, r in [(10, 20), (10, 30), (50, 20), (40, 10), (40, 10), (7, 7)]
    ]
    m = pair_metrics(items, [1.0, 0.0, 1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    assert m["pairs_shorter_preferred"] == 2 and m["accuracy_shorter_preferred"] == 0.5
    assert m["pairs_longer_preferred"] == 3 and m["accuracy_longer_preferred"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)  # the tie counts in the overall accuracy only
    assert chosen_longer_share(items) == pytest.approx(3 / 5)
