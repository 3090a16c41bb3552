"""Tiny causal LMs built in test code (no download): a byte-level BPE tokenizer trained on real
text from ../shared/data and a ~150k-parameter Llama, saved as safetensors with a chat template."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_causal_lm(
    out: Path, texts: Iterable[str], vocab_size: int = 512, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """Train a BPE tokenizer on ``texts`` and save it with a randomly initialised tiny Llama to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    model = LlamaForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def gsm8k_and_alpaca_texts(shared: Path, n: int = 400) -> list[str]:
    """Real training text for the tokenizer: GSM8K questions/answers and Alpaca outputs."""
    texts = []
    with open(shared / "gsm8k" / "test.jsonl") as fh:
        for i, line in enumerate(fh):
            if i >= n:
                break
            row = json.loads(line)
            texts += [row["question"], row["answer"]]
    alpaca = json.loads((shared / "llama-factory" / "alpaca_en_demo.json").read_text())
    texts += [r["instruction"] + "\n" + r["output"] for r in alpaca[:n]]
    return texts
