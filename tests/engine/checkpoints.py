"""Tiny random HuggingFace checkpoints of every supported architecture, for tests.

Weights are random but scaled up so that logits are peaky: greedy argmax then has clear
winners, and token-for-token comparisons are meaningful rather than float-noise lotteries.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMMON = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# name -> (transformers config class name, model class name, overrides)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "llama-gqa-llama3rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "num_key_value_heads": 2,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "llama-tied-bias-linearrope-headdim32": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "num_key_value_heads": 4,
            "head_dim": 32,
            "tie_word_embeddings": True,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        },
    ),
    "mistral-gqa4": (
        "MistralConfig",
        "MistralForCausalLM",
        {"num_key_value_heads": 1, "sliding_window": None},
    ),
    "qwen2-qkv-bias": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "qwen3-qk-norm": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        {"num_key_value_heads": 2, "head_dim": 32, "rope_theta": 1000.0},
    ),
}


def build_checkpoint(name: str, directory: Path, seed: int = 0) -> Path:
    """Write a tiny checkpoint of variant `name` into `directory` and return it."""
    import transformers

    config_class, model_class, overrides = VARIANTS[name]
    config = getattr(transformers, config_class)(**{**COMMON, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config).float()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.add_(torch.randn_like(param) * 0.1)  # non-trivial norm weights
            else:
                param.normal_(0.0, 0.15 if param.dim() > 1 else 0.05)
        model.get_output_embeddings().weight.mul_(4.0)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    return directory
