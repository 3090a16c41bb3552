"""The 1B-class reward model the device benchmarks build on the machine (no download).

A 1.1B Llama-shaped sequence classifier (TinyLlama's shape) with random bf16 weights, built directly in
bf16 on ``device`` (half the memory and time of fp32) and saved with the given tokenizer like any
reward-model folder. Speed does not depend on the weights' values. Used by benchmarks/gpu/device_bench.py
(scoring_large) and benchmarks/scale/gpu_workers.py.
"""

from __future__ import annotations

from pathlib import Path


def build_llama_rm(out: Path, tokenizer: Path, device: str, layers: int = 22) -> int:
    """Build, save to ``out`` and free the model; returns its parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForSequenceClassification(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return params
