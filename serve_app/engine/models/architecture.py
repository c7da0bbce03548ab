"""ModelArchitecture: the parts of a HuggingFace config.json the engine needs, normalized
across transformers v4 (`rope_theta`, `rope_scaling`) and v5 (`rope_parameters`) layouts."""

from __future__ import annotations

from dataclasses import dataclass

# architecture name -> (qkv bias key or fixed value, o_proj bias, q/k norm)
ARCHITECTURE_FLAGS: dict[str, dict[str, object]] = {
    "LlamaForCausalLM": {"qkv_bias": "attention_bias", "o_bias": "attention_bias"},
    "MistralForCausalLM": {"qkv_bias": False, "o_bias": False},
    "Qwen2ForCausalLM": {"qkv_bias": True, "o_bias": False},
    "Qwen3ForCausalLM": {"qkv_bias": "attention_bias", "o_bias": "attention_bias", "qk_norm": True},
}
MODEL_TYPE_TO_ARCHITECTURE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or one of its settings is not supported."""


@dataclass(frozen=True, slots=True)
class ModelArchitecture:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    sliding_window: int | None
    torch_dtype: str | None

    @classmethod
    def from_hf_config(cls, config: dict) -> ModelArchitecture:
        architecture = _architecture_name(config)
        flags = ARCHITECTURE_FLAGS[architecture]
        if config.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(
                f"hidden_act {config['hidden_act']!r} is not supported; supported: 'silu'"
            )
        rope_parameters = dict(config.get("rope_parameters") or {})
        rope_theta = float(rope_parameters.pop("rope_theta", config.get("rope_theta", 10000.0)))
        rope_scaling = rope_parameters or config.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) == "default":
            rope_scaling = None
        num_heads = int(config["num_attention_heads"])
        hidden_size = int(config["hidden_size"])
        sliding_window = config.get("sliding_window")
        if architecture == "Qwen2ForCausalLM" and not config.get("use_sliding_window", False):
            sliding_window = None
        if architecture == "Qwen3ForCausalLM" and not config.get("use_sliding_window", False):
            sliding_window = None
        return cls(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(config.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=_flag(flags["qkv_bias"], config),
            o_bias=_flag(flags["o_bias"], config),
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=bool(flags.get("qk_norm", False)),
            sliding_window=int(sliding_window) if sliding_window else None,
            torch_dtype=config.get("torch_dtype") or config.get("dtype"),
        )


def _architecture_name(config: dict) -> str:
    names = list(config.get("architectures") or [])
    if not names and config.get("model_type") in MODEL_TYPE_TO_ARCHITECTURE:
        names = [MODEL_TYPE_TO_ARCHITECTURE[config["model_type"]]]
    for name in names:
        if name in ARCHITECTURE_FLAGS:
            return name
    raise UnsupportedModelError(
        f"architecture {names or config.get('model_type')!r} is not supported; "
        f"supported: {sorted(ARCHITECTURE_FLAGS)}"
    )


def _flag(rule: object, config: dict) -> bool:
    return bool(config.get(rule, False)) if isinstance(rule, str) else bool(rule)
