"""Quality-aware reward-model trainer (docs/methods.md sections 3-6) on transformers' Trainer.

Bradley-Terry on ``AutoModelForSequenceClassification(num_labels=1)`` with, from the rm shard's
columns, a per-pair weight, an adaptive margin inside the sigmoid and a soft label (``flipped`` is
informational: the build already swapped the pair). Options: a center-rewards term, a SimCSE
contrastive loss on the representation that feeds the reward head, a product-of-experts length
debiasing bias expert (dropped at save), and group DRO over the shard's group ids.

The default bias expert (``poe_expert: length``) reads each pair's antisymmetric length and markdown
features (curation/length_features.py, from the untruncated response token counts and texts, computed
when the shard is tokenised), is fitted alone on the train pairs before training (the bias-only model)
and then trained jointly: its logit is added to the Bradley-Terry logit,
d = r_c - r_r + b(features) - margin, so the main model only gets the gradient length cannot explain.

Metrics on the eval split: accuracy, per-group and worst-group accuracy, accuracy on flipped and
unflipped pairs and on the pairs where the shorter (longer) response is preferred, Spearman(reward,
response length). The saved folder loads with plain
``AutoModelForSequenceClassification.from_pretrained`` (left truncation is kept in its tokenizer).

    result = train(RMConfig(shards=..., model=..., output_dir=...))
    metrics = evaluate(result["output_dir"], shards, split="eval")
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers import set_seed

from curation.core.length_features import FEATURE_NAMES, markdown_matrix, pair_length_features
from curation.core.losses import (
    bradley_terry_loss,
    center_rewards_term,
    group_dro_step,
    group_losses,
    simcse_loss,
)
from curation.core.models import (
    ModelSpec,
    bf16_supported,
    encode_untruncated,
    load_sequence_classifier,
    pick_device,
)
from curation.core.options import option
from curation.core.padding import pad_batch
from training.base import ShardTrainer, load_data, load_padded_tokenizer, start
from training.common import CurateTrainingConfig, ListDataset, ensure_chat_template
from training.shards import LengthReport, read_rows

log = logging.getLogger(__name__)

BIAS_EXPERT_FILE = "bias_expert.safetensors"
STATE_FILE = "curate_rm_state.json"
RM_INFO_FILE = "curate_rm.json"
POE_EXPERTS = ("length", "noisy_embedding")


@dataclass
class RMConfig(CurateTrainingConfig):
    """Reward-model options (plus every transformers.TrainingArguments option), docs/methods.md 3-6.

    Paper defaults: lr 5e-6, 1 epoch (Secrets of RLHF II: batch 32; ours 8); SimCSE beta 1, dropout 0.05
    (contrastive RM); PoE bias expert at 3x the learning rate (Loose lips); group DRO eta 0.01
    (Q-Diversity). Ours: SimCSE temperature 0.05, PoE noise 0.1 of the embedding std.
    """

    max_length: int = option(256, "Maximum tokens per (prompt + response); longer ones lose their start.")
    learning_rate: float = option(5e-6, "Learning rate (Secrets-II: 5e-6).")
    per_device_train_batch_size: int = option(8, "Pairs per device per step.")
    num_train_epochs: float = option(1.0, "Epochs over the train split.")
    logging_steps: float = option(10, "Log loss and learning rate every N steps.")
    use_weights: bool = option(True, "Multiply each pair's loss by its shard weight.")
    use_margin: bool = option(True, "Put the shard's adaptive margin inside the sigmoid.")
    use_soft_labels: bool = option(True, "Use the shard's soft-label alpha.")
    center_rewards_coefficient: float = option(
        0.0, "Weight of the (r_c + r_r)^2 centring term (0 = off; TRL suggests 0.01)."
    )
    simcse_beta: float = option(0.0, "Weight of the SimCSE contrastive loss (0 = off; paper: 1).")
    simcse_temperature: float = option(0.05, "SimCSE cosine temperature tau.")
    simcse_variant: str = option(
        "sample",
        "'sample': two dropout views of each response; 'diff': views of h_c - h_r against h_r - h_c.",
        choices=["sample", "diff"],
    )
    poe: bool = option(
        False, "Product-of-experts length debiasing: train a small bias expert jointly, drop it at save."
    )
    poe_expert: str = option(
        "length",
        "Bias expert of --poe. 'length': a linear (or odd MLP) function of the pair's antisymmetric "
        "length and markdown features (curation/length_features.py, untruncated response token counts), "
        "fitted alone on the train pairs first; it can absorb the length cue whatever the truncation. "
        "'noisy_embedding': the paper's expert, an MLP on noised input embeddings plus log length of "
        "the (truncated) sequence.",
        choices=["length", "noisy_embedding"],
    )
    poe_length_hidden: int = option(
        0, "Length expert: 0 = linear in the features; N > 0 = an odd MLP (h(f) - h(-f)) with N tanh units."
    )
    poe_warm_start: bool = option(
        True,
        "Length expert: fit it alone on the train pairs (L-BFGS on the same loss) before training, so "
        "it holds the length cue from the first step instead of racing the main model for it.",
    )
    poe_warm_start_l2: float = option(
        0.01,
        "Length expert: L2 penalty (on standardised features) of the warm-start fit; keeps the fit "
        "finite when length separates the train pairs.",
    )
    poe_resample: bool = option(
        True,
        "Length expert (with poe_warm_start): draw the train pairs in proportion to the fitted expert's "
        "residual (the part of each label that length leaves unexplained) and weight each drawn pair's "
        "loss by its inverse: the PoE gradient in expectation, with every pair's gradient about the same "
        "size. Without it Adam, which scales its steps per coordinate, follows the many small "
        "length-following gradients over the few large ones that cancel them in the PoE sum.",
    )
    poe_noise_std: float = option(
        0.1, "noisy_embedding expert: input noise, as a fraction of the embedding std."
    )
    poe_lr_multiplier: float = option(3.0, "Bias expert learning rate / main learning rate (paper: 3).")
    poe_hidden: int = option(64, "noisy_embedding expert: hidden width of its MLP.")
    group_dro: bool = option(False, "Group DRO over the shard's group ids.")
    group_dro_eta: float = option(0.01, "Group DRO step size eta (paper: 0.01).")
    bf16_autocast: str = option(
        "false",
        "bf16 autocast: 'true', 'false' or 'auto' (on where curation.core.models.bf16_supported says so). "
        "Off by default: on the project's AVX-512 CPU it made MiniLM training 3x slower (benchmarks/train_rm).",
        choices=["auto", "true", "false"],
    )
    disable_dropout: bool = option(
        True, "Turn the model's dropout off (as TRL's RewardTrainer does); kept on for SimCSE views."
    )
    eval_batch_size_tokens: int = option(16384, "Token budget per evaluation batch.")

    def __post_init__(self) -> None:
        mode = str(self.bf16_autocast).lower()
        device = "cpu" if self.use_cpu else pick_device()
        if mode == "true" or (mode == "auto" and not self.fp16 and bf16_supported(device)):
            self.bf16 = True
            self.use_cpu = self.use_cpu or device == "cpu"  # transformers wants use_cpu for bf16 on CPU
        super().__post_init__()
        if self.simcse_variant not in ("sample", "diff"):
            raise ValueError(f"simcse_variant={self.simcse_variant!r}: choose 'sample' or 'diff'")
        if self.poe_expert not in POE_EXPERTS:
            raise ValueError(f"poe_expert={self.poe_expert!r}: choose one of {', '.join(POE_EXPERTS)}")
        if self.poe_length_hidden < 0:
            raise ValueError(f"poe_length_hidden={self.poe_length_hidden}: must be 0 (linear) or positive")


# ----------------------------------------------------------------------------- data
def _last_content(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


def tokenize_pairs(
    rows: list[dict[str, Any]], tokenizer, max_length: int, overlong: str, what: str
) -> tuple[list[dict[str, Any]], LengthReport]:
    """Tokenise prompt+chosen and prompt+rejected with LEFT truncation (the response end is kept)."""
    ensure_chat_template(tokenizer)
    report = LengthReport(what, max_length)
    if not rows:  # the tokenizer fails on an empty batch; the caller names the empty split
        return [], report
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    texts = []
    for r in rows:
        texts.append(tokenizer.apply_chat_template(list(r["prompt"]) + list(r["chosen"]), tokenize=False))
        texts.append(tokenizer.apply_chat_template(list(r["prompt"]) + list(r["rejected"]), tokenize=False))
    full_lengths = [len(x) for x in encode_untruncated(tokenizer, texts, add_special_tokens=False)]
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    tokenizer.truncation_side = side
    responses = [_last_content(r[k]) for r in rows for k in ("chosen", "rejected")]
    resp = encode_untruncated(tokenizer, responses, add_special_tokens=False)
    # the length expert's features: untruncated response token counts, so truncation cannot hide length
    markdown = markdown_matrix(responses)
    features = pair_length_features(
        [len(x) for x in resp[0::2]], [len(x) for x in resp[1::2]], markdown[0::2], markdown[1::2]
    ).tolist()
    out = []
    for i, r in enumerate(rows):
        too_long = max(full_lengths[2 * i], full_lengths[2 * i + 1]) > budget
        if too_long and overlong == "drop":
            report.add(r["id"], dropped=True)
            continue
        report.add(r["id"], truncated=too_long)
        out.append(
            {
                "id": r["id"],
                "chosen_ids": enc[2 * i],
                "rejected_ids": enc[2 * i + 1],
                "weight": float(r["weight"]),
                "importance": 1.0,  # set on train pairs when the length expert resamples them
                "margin": float(r["margin"]),
                "soft_label": float(r["soft_label"]),
                "flipped": bool(r["flipped"]),
                "group": int(r["group"]),
                "len_chosen": len(resp[2 * i]),
                "len_rejected": len(resp[2 * i + 1]),
                "length_features": features[i],
            }
        )
    report.log()
    return out, report


def load_pairs(
    shards: str, split: str, tokenizer, max_length: int, overlong: str, limit: int | None, verify: bool = True
) -> tuple[ListDataset, LengthReport]:
    rows = read_rows(shards, "rm", split, limit, verify)
    items, report = tokenize_pairs(rows, tokenizer, max_length, overlong, f"rm/{split}")
    return ListDataset(items, [max(len(x["chosen_ids"]), len(x["rejected_ids"])) for x in items]), report


@dataclass
class PairCollator:
    """Stacks chosen then rejected sequences into one padded batch of 2B rows plus the shard columns."""

    pad_token_id: int
    padding_side: str = "right"
    multiple_of: int = 1
    limit: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [x["chosen_ids"] for x in items] + [x["rejected_ids"] for x in items]
        ids, mask = pad_batch(seqs, self.pad_token_id, self.multiple_of, self.limit, self.padding_side)
        f = lambda k, dt: torch.tensor([x[k] for x in items], dtype=dt)  # noqa: E731
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "weight": f("weight", torch.float32),
            "importance": f("importance", torch.float32),
            "margin": f("margin", torch.float32),
            "soft_label": f("soft_label", torch.float32),
            "flipped": f("flipped", torch.bool),
            "group": f("group", torch.long),
            "len_chosen": f("len_chosen", torch.long),
            "len_rejected": f("len_rejected", torch.long),
            "length_features": f("length_features", torch.float32),
        }


# ----------------------------------------------------------------------------- model pieces
HEAD_NAMES = ("score", "classifier", "classification_head")


def reward_head(model: nn.Module) -> tuple[str, nn.Module]:
    for name in HEAD_NAMES:
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return name, head
    raise ValueError(f"{type(model).__name__}: no reward head ({', '.join(HEAD_NAMES)}) found for SimCSE")


class HeadInput:
    """Captures the representation that feeds the reward head (one vector per sequence)."""

    def __init__(self, model: nn.Module) -> None:
        self.name, head = reward_head(model)
        self.value: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        head.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.value = args[0]

    def pooled(self, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.value
        if h.dim() == 3:  # per-token states: the decoder head reads the last real token, encoders the first
            if self.name == "score":  # the last position the mask keeps, whichever side pads
                positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
                last = (attention_mask * positions).argmax(1)
                h = h[torch.arange(h.size(0), device=h.device), last]
            else:
                h = h[:, 0]
        return h


class BiasExpert(nn.Module):
    """A small bias expert (PoE): masked mean of Gaussian-noised input embeddings and log length -> MLP.

    It reads the main model's embedding table without gradient, so it can only learn coarse cues.
    """

    def __init__(self, embeddings: nn.Embedding, hidden: int, noise_std: float) -> None:
        super().__init__()
        self.embeddings = [embeddings]  # a list: not a submodule, not in this module's state_dict
        dim = embeddings.weight.shape[1]
        self.noise = noise_std * float(embeddings.weight.detach().float().std())
        self.mlp = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            e = self.embeddings[0](input_ids).float()
        e = e + self.noise * torch.randn_like(e)
        m = attention_mask.unsqueeze(-1).float()
        length = m.sum(1)
        pooled = (e * m).sum(1) / length.clamp(min=1)
        return self.mlp(torch.cat([pooled, torch.log1p(length)], dim=-1)).squeeze(-1)


class LengthExpert(nn.Module):
    """A bias expert (PoE) on a pair's antisymmetric length features -> the pair's bias logit.

    Features (``curation.length_features.FEATURE_NAMES``) are divided by their root mean square over
    the train pairs (``scale``, kept in the state dict) and enter a linear map without intercept, or
    with ``hidden`` > 0 an odd MLP h(f) - h(-f): either way swapping chosen and rejected negates the
    logit, and a pair whose two responses look alike gets none.
    """

    def __init__(self, n_features: int, hidden: int = 0) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(n_features))
        self.hidden = hidden
        if hidden:
            self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        else:
            self.net = nn.Linear(n_features, 1, bias=False)
            nn.init.zeros_(self.net.weight)  # neutral until fitted or trained

    def set_scale(self, features: torch.Tensor) -> None:
        rms = features.float().pow(2).mean(0).sqrt()
        self.scale.copy_(torch.where(rms > 1e-8, rms, torch.ones_like(rms)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.float() / self.scale
        if self.hidden:
            return (self.net(x) - self.net(-x)).squeeze(-1)
        return self.net(x).squeeze(-1)

    def linear_weights(self) -> dict[str, float] | None:
        """Per-feature weight in raw feature units (logit per unit of feature), for the linear expert."""
        if self.hidden:
            return None
        w = (self.net.weight.detach().squeeze(0) / self.scale).cpu().tolist()
        return dict(zip(FEATURE_NAMES, w, strict=True))


def fit_bias_only(
    expert: LengthExpert,
    features: torch.Tensor,
    margin: torch.Tensor,
    soft_label: torch.Tensor,
    weight: torch.Tensor,
    l2: float,
    max_iter: int = 200,
) -> float:
    """Fit ``expert`` alone on every train pair (full-batch L-BFGS on the pairwise loss plus L2); the loss."""
    params = list(expert.parameters())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")
    zeros = torch.zeros_like(margin)

    def objective() -> torch.Tensor:
        per_pair = bradley_terry_loss(zeros, zeros, margin, soft_label, bias=expert(features))
        return (per_pair * weight).mean() + l2 * sum(p.pow(2).sum() for p in params)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(objective())


# ----------------------------------------------------------------------------- trainer
class RewardTrainer(ShardTrainer):
    """The quality-aware pairwise loss, the bias experts, group DRO and reward-model metrics.

    ``n_groups``: the number of group ids (default: from the train pairs).
    """

    cfg: RMConfig
    trained_key = "pairs_trained"

    def __init__(self, *args, n_groups: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.cfg
        if n_groups is None:
            n_groups = max((x["group"] for x in self.train_dataset.items), default=0) + 1
        self.n_groups = max(1, n_groups)
        self.dro_q = torch.full((self.n_groups,), 1.0 / self.n_groups)
        self.head_input = HeadInput(self.model) if cfg.simcse_beta > 0 else None
        self.bias_expert: BiasExpert | LengthExpert | None = None
        self.poe_draw: list[float] | None = None  # the length expert's draw weight per train pair
        self.warm_start: dict[str, Any] | None = None  # the length expert's fit alone, this run
        if cfg.poe and cfg.poe_expert == "length":
            self.bias_expert = self.new_length_expert()
        elif cfg.poe:
            self.bias_expert = BiasExpert(
                self.model.get_input_embeddings(), cfg.poe_hidden, cfg.poe_noise_std
            ).to(self.args.device)
        if self.bias_expert is not None and self.accelerator.num_processes > 1:
            # its gradients are averaged across processes too
            self.bias_expert = self.accelerator.prepare_model(self.bias_expert)

    def train_sampler_weights(self) -> list[float] | None:
        """Drawn in proportion to the length expert's residuals when it resamples (else each pair once)."""
        return self.poe_draw

    def create_optimizer(self, model=None):
        opt = super().create_optimizer(model)
        if self.bias_expert is not None and not any(
            p is q for g in opt.param_groups for p in g["params"] for q in self.bias_expert.parameters()
        ):
            opt.add_param_group(
                {
                    "params": list(self.bias_expert.parameters()),
                    "lr": self.args.learning_rate * self.cfg.poe_lr_multiplier,
                    "weight_decay": 0.0,
                }
            )
        return opt

    @property
    def length_expert(self) -> LengthExpert | None:
        """The length bias expert (unwrapped), or None when another expert or none is used."""
        if self.bias_expert is None:
            return None
        expert = self.accelerator.unwrap_model(self.bias_expert)
        return expert if isinstance(expert, LengthExpert) else None

    def pair_bias(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The bias expert's logit for each pair (added to r_c - r_r while training)."""
        if self.length_expert is not None:
            return self.bias_expert(inputs["length_features"])
        bias = self.bias_expert(inputs["input_ids"], inputs["attention_mask"])
        b = inputs["weight"].shape[0]
        return bias[:b] - bias[b:]

    def new_length_expert(self) -> LengthExpert:
        """A length expert scaled to the train pairs; its initial weights depend on the seed only."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.args.seed)
            expert = LengthExpert(len(FEATURE_NAMES), self.cfg.poe_length_hidden)
        if self.train_dataset is not None and len(self.train_dataset):
            expert.set_scale(torch.tensor([x["length_features"] for x in self.train_dataset.items]))
        return expert.to(self.args.device)

    def prepare_length_expert(self, restored: bool = False) -> dict[str, Any] | None:
        """Before joint training: fit the length expert alone on every train pair (the bias-only model)
        and, with ``poe_resample``, set the pairs' draw and importance weights from its residuals.

        ``restored``: the expert came from a checkpoint; the same fit is made on a fresh expert, for the
        draw only, so a resumed run draws as the first run did. Returns the fit (None when restored).
        """
        cfg, ds = self.cfg, self.train_dataset
        if self.length_expert is None or not cfg.poe_warm_start or ds is None or not len(ds):
            return None
        expert = self.new_length_expert() if restored else self.length_expert
        items, device = ds.items, self.args.device
        col = lambda k: torch.tensor([x[k] for x in items], dtype=torch.float32, device=device)  # noqa: E731
        zeros = torch.zeros(len(items), device=device)
        features = col("length_features")
        margin = col("margin") if cfg.use_margin else zeros
        soft = col("soft_label") if cfg.use_soft_labels else zeros
        weight = col("weight") if cfg.use_weights else zeros + 1.0
        loss = fit_bias_only(expert, features, margin, soft, weight, cfg.poe_warm_start_l2)
        with torch.no_grad():
            bias = expert(features)
            d = bias - margin
            # |d loss / d logit| of each pair with the expert alone: what length leaves unexplained
            residual = ((1 - soft) * torch.sigmoid(-d) - soft * torch.sigmoid(d)).abs().clamp(min=1e-4)
        if cfg.poe_resample:
            # draw pair i with q_i = w_i r_i / Z; its loss, already times w_i in compute_loss, gets
            # Z / (N q_i): E[w_i loss_i Z / (N w_i r_i)] = (1/N) sum_i w_i loss_i, the PoE objective
            q = (weight * residual).cpu().tolist()
            z = sum(q)
            for it, qi in zip(items, q, strict=True):
                it["importance"] = z / (len(items) * qi) if qi > 0 else 0.0
            self.poe_draw = q
        if restored:
            return None
        fit = {
            "loss": loss,
            "train_accuracy": float((bias > 0).float().mean()),
            "mean_residual": float(residual.mean()),
            "weights": expert.linear_weights(),
        }
        log.info("length expert fitted alone on %d train pairs: %s", len(items), fit)
        return fit

    def pair_rewards(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        rewards = out.logits.squeeze(-1).float()
        b = inputs["weight"].shape[0]
        return rewards[:b], rewards[b:]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.cfg
        r_c, r_r = self.pair_rewards(model, inputs)
        bias = self.pair_bias(inputs) if self.bias_expert is not None and model.training else None
        zeros = torch.zeros_like(r_c)
        per_pair = bradley_terry_loss(
            r_c,
            r_r,
            inputs["margin"] if cfg.use_margin else zeros,
            inputs["soft_label"] if cfg.use_soft_labels else zeros,
            bias=bias,
        )
        if cfg.center_rewards_coefficient:
            per_pair = per_pair + cfg.center_rewards_coefficient * center_rewards_term(r_c, r_r)
        if cfg.use_weights:
            per_pair = per_pair * inputs["weight"]
        if model.training and self.poe_draw is not None:
            per_pair = per_pair * inputs["importance"]
        if cfg.group_dro and model.training:
            g_loss, count = group_losses(
                per_pair, inputs["group"].clamp(max=self.n_groups - 1), self.n_groups
            )
            # the weights follow the group losses of the whole global batch, the same on every process
            total = self.accelerator.reduce(torch.stack([g_loss.detach() * count, count]), "sum")
            global_loss = total[0] / total[1].clamp(min=1)
            self.dro_q = group_dro_step(self.dro_q.to(g_loss.device), global_loss, cfg.group_dro_eta)
            loss = (self.dro_q * g_loss).sum()
        else:
            loss = per_pair.mean()
        if cfg.simcse_beta > 0 and model.training:
            loss = loss + cfg.simcse_beta * self._simcse(model, inputs)
        self.count_trained(model, int(r_c.shape[0]))
        return (loss, {"r_chosen": r_c, "r_rejected": r_r}) if return_outputs else loss

    def _simcse(self, model, inputs) -> torch.Tensor:
        mask = inputs["attention_mask"]
        h1 = self.head_input.pooled(mask)
        model(input_ids=inputs["input_ids"], attention_mask=mask)  # second dropout view
        h2 = self.head_input.pooled(mask)
        if self.cfg.simcse_variant == "diff":
            b = inputs["weight"].shape[0]
            d1, d2 = h1[:b] - h1[b:], h2[:b] - h2[b:]
            h1, h2 = torch.cat([d1, -d1]), torch.cat([d2, -d2])
        return simcse_loss(h1, h2, self.cfg.simcse_temperature)

    # checkpoints carry the bias expert and the DRO weights; the final model does not
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        out = Path(output_dir or self.args.output_dir)
        if not self.args.should_save or not out.name.startswith("checkpoint-"):
            return
        if self.bias_expert is not None:
            from safetensors.torch import save_file

            save_file(
                self.accelerator.unwrap_model(self.bias_expert).state_dict(), str(out / BIAS_EXPERT_FILE)
            )
        (out / STATE_FILE).write_text(
            json.dumps({"dro_q": self.dro_q.tolist(), "pairs_trained": self.units_trained})
        )

    def load_extra_state(self, checkpoint: str) -> bool:
        """Restore the bias expert and the DRO weights from a checkpoint; True if the expert was restored."""
        ck = Path(checkpoint)
        restored = False
        if self.bias_expert is not None and (ck / BIAS_EXPERT_FILE).exists():
            from safetensors.torch import load_file

            state = load_file(str(ck / BIAS_EXPERT_FILE))
            try:
                self.accelerator.unwrap_model(self.bias_expert).load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"{ck / BIAS_EXPERT_FILE}: does not fit the --poe_expert {self.cfg.poe_expert} bias expert "
                    f"of this run (was the checkpoint trained with another poe_expert or poe_length_hidden?)"
                ) from exc
            restored = True
        if (ck / STATE_FILE).exists():
            state = json.loads((ck / STATE_FILE).read_text())
            self.dro_q = torch.tensor(state["dro_q"])
            self.units_trained = int(state.get("pairs_trained", 0))
        return restored

    def eval_metrics(self, ds) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        scores = score_dataset(model, ds, self.data_collator, self.cfg.eval_batch_size_tokens, self.args.bf16)
        return pair_metrics(ds.items, *scores)

    # ------------------------------------------------------------------------- the run
    def before_training(self, checkpoint: str | None) -> dict[str, Any]:
        """Restore the bias expert and DRO weights when resuming; fit the length expert alone."""
        restored = self.load_extra_state(checkpoint) if checkpoint else False
        self.warm_start = self.prepare_length_expert(restored)
        return {}

    def save_final(self) -> None:
        """The main model only (no bias expert), its tokenizer truncating as in training, curate_rm.json."""
        self.processing_class.model_max_length = self.cfg.max_length  # a plain pipeline truncates the same
        super().save_final()
        if self.args.should_save:
            info = {"max_length": self.cfg.max_length, "truncation_side": "left", "config": asdict(self.cfg)}
            (Path(self.args.output_dir) / RM_INFO_FILE).write_text(
                json.dumps(json.loads(json.dumps(info, default=str)), indent=2)
            )

    def run_summary(self, trained: int, seconds: float) -> dict[str, Any]:
        expert = self.length_expert
        return {
            **super().run_summary(trained, seconds),
            "pairs_per_second": trained / seconds if seconds > 0 else math.nan,
            "train_chosen_longer_share": chosen_longer_share(self.train_dataset.items),
            "bias_expert": None  # which expert trained, its fit alone and (linear) its final weights
            if self.bias_expert is None
            else {
                "kind": self.cfg.poe_expert,
                "warm_start": self.warm_start,
                "weights": expert.linear_weights() if expert is not None else None,
            },
        }


# ----------------------------------------------------------------------------- scoring and metrics
@torch.no_grad()
def score_dataset(
    model, ds: ListDataset, collator: PairCollator, token_budget: int = 16384, bf16: bool = False
) -> tuple[list[float], list[float]]:
    """Rewards of chosen and rejected for every pair, in length-sorted batches under a token budget."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    r_c = [0.0] * len(ds)
    r_r = [0.0] * len(ds)
    batches, cur = [], []
    for i in sorted(range(len(ds)), key=lambda i: ds.lengths[i]):
        if cur and (len(cur) + 1) * 2 * ds.lengths[i] > token_budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    for idx in batches:
        batch = collator([ds[i] for i in idx])
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            )
        rewards = out.logits.squeeze(-1).float().cpu().tolist()
        for k, i in enumerate(idx):
            r_c[i], r_r[i] = rewards[k], rewards[len(idx) + k]
    model.train(was_training)
    return r_c, r_r


def chosen_longer_share(items: list[dict[str, Any]]) -> float:
    """Share of pairs whose chosen response has more tokens than the rejected one (ties left out)."""
    longer = sum(it["len_chosen"] > it["len_rejected"] for it in items)
    shorter = sum(it["len_chosen"] < it["len_rejected"] for it in items)
    return longer / (longer + shorter) if longer + shorter else math.nan


def pair_metrics(items: list[dict[str, Any]], r_c: list[float], r_r: list[float]) -> dict[str, float]:
    """accuracy, per-group and worst-group accuracy, flipped/unflipped accuracy, accuracy where the shorter
    (longer) response is preferred (response tokens; ties in neither), Spearman(reward, length)."""
    from scipy.stats import spearmanr

    right = [c > r for c, r in zip(r_c, r_r, strict=True)]
    out: dict[str, float] = {"pairs": float(len(items)), "accuracy": sum(right) / max(1, len(right))}
    by_group: dict[int, list[bool]] = {}
    for it, ok in zip(items, right, strict=True):
        by_group.setdefault(it["group"], []).append(ok)
    for g, oks in sorted(by_group.items()):
        out[f"accuracy_group_{g}"] = sum(oks) / len(oks)
    if by_group:
        out["worst_group_accuracy"] = min(sum(v) / len(v) for v in by_group.values())
    for name, flag in (("flipped", True), ("unflipped", False)):
        oks = [ok for it, ok in zip(items, right, strict=True) if it["flipped"] is flag]
        if oks:
            out[f"accuracy_{name}"] = sum(oks) / len(oks)
    for name, keep in (
        ("shorter_preferred", lambda it: it["len_chosen"] < it["len_rejected"]),
        ("longer_preferred", lambda it: it["len_chosen"] > it["len_rejected"]),
    ):
        oks = [ok for it, ok in zip(items, right, strict=True) if keep(it)]
        out[f"pairs_{name}"] = float(len(oks))
        if oks:
            out[f"accuracy_{name}"] = sum(oks) / len(oks)
    rewards = list(r_c) + list(r_r)
    lengths = [it["len_chosen"] for it in items] + [it["len_rejected"] for it in items]
    if len(set(lengths)) > 1 and len(set(rewards)) > 1:
        out["spearman_reward_length"] = float(spearmanr(rewards, lengths).statistic)
    out["mean_margin"] = sum(c - r for c, r in zip(r_c, r_r, strict=True)) / max(1, len(items))
    return out


# ----------------------------------------------------------------------------- entry points
def _tokenizer(spec: ModelSpec, max_length: int):
    tok = load_padded_tokenizer(spec)
    tok.truncation_side = "left"
    return tok


def train(config: RMConfig) -> dict[str, Any]:
    """Train a reward model on ``config.shards``; returns metrics, length reports and the output folder."""
    spec, tok = start(config)
    tok.truncation_side = "left"

    def load(split: str, limit: int | None, held_out: bool):
        overlong = "truncate" if held_out else config.overlong
        return load_pairs(config.shards, split, tok, config.max_length, overlong, limit, config.verify_shards)

    data = load_data(config, "rm", "pairs", load)
    set_seed(config.seed)  # before the model: a new score head is drawn from the seeded generator
    model = load_sequence_classifier(spec, num_labels=1)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if config.disable_dropout and config.simcse_beta <= 0:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    trainer = RewardTrainer(
        model=model,
        args=config,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PairCollator(
            tok.pad_token_id, tok.padding_side, config.width_multiple(), config.max_length
        ),
        processing_class=tok,
    )
    return trainer.run(data)


def evaluate(
    model_dir: str | Path,
    shard_dir: str | Path,
    split: str = "eval",
    max_length: int | None = None,
    limit: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Held-out metrics of a saved reward model (any sequence classifier folder) on an rm shard split."""
    info = Path(model_dir) / RM_INFO_FILE
    if max_length is None:
        max_length = json.loads(info.read_text())["max_length"] if info.exists() else 512
    spec = ModelSpec(str(model_dir), trust_remote_code)
    tok = _tokenizer(spec, max_length)
    ds, report = load_pairs(str(shard_dir), split, tok, max_length, "truncate", limit)
    model = load_sequence_classifier(spec, num_labels=1).to(pick_device())
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    r_c, r_r = score_dataset(model, ds, PairCollator(tok.pad_token_id, tok.padding_side))
    return {**pair_metrics(ds.items, r_c, r_r), "truncated": float(report.truncated)}
