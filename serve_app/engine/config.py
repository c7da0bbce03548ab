"""EngineConfig: every engine knob, defined once and validated with errors that name the field."""

from __future__ import annotations

from dataclasses import dataclass, fields

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")


class ConfigError(ValueError):
    """A configuration value is out of its allowed range; the message names the field."""


@dataclass(slots=True)
class EngineConfig:
    """Engine settings. `model`: a HuggingFace directory or a preset (`tiny`, `bench`)."""

    model: str = "tiny"
    dtype: str = "auto"  # auto: float32 on CPU; the checkpoint dtype (else bfloat16) on CUDA
    device: str = "auto"  # auto: cuda when available, else cpu
    block_size: int = 16
    kv_cache_memory_bytes: int | None = None  # explicit KV budget; overrides the fraction
    kv_cache_memory_fraction: float = 0.1  # of free device memory after the weights are loaded
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    attention_backend: str = "auto"  # auto: triton on CUDA; cpu on CPU (torch without a C compiler)
    cpu_fast_paths: bool = True  # CPU: packed weights, native elementwise kernels (fast_paths.py)
    cpu_packed_weights: bool = True  # CPU float32: oneDNN GEMMs on weights packed at load
    cpu_gemm_warmup: bool = True  # build the packed GEMMs' kernels per decode batch size at start
    tensor_parallel_size: int = 1
    seed: int = 0  # seeds the sampler for requests that carry no seed of their own

    def __post_init__(self) -> None:
        _require(bool(self.model), "model", "a HuggingFace directory or a preset name", self.model)
        _require(self.dtype in DTYPES, "dtype", f"one of {DTYPES}", self.dtype)
        _require(self.device in DEVICES, "device", f"one of {DEVICES}", self.device)
        _require(
            self.attention_backend in ATTENTION_BACKENDS,
            "attention_backend",
            f"one of {ATTENTION_BACKENDS}",
            self.attention_backend,
        )
        _require(
            self.block_size in (8, 16, 32, 64, 128),
            "block_size",
            "8, 16, 32, 64 or 128",
            self.block_size,
        )
        if self.kv_cache_memory_bytes is not None:
            _require(
                self.kv_cache_memory_bytes > 0,
                "kv_cache_memory_bytes",
                "> 0",
                self.kv_cache_memory_bytes,
            )
        _require(
            0.0 < self.kv_cache_memory_fraction <= 0.95,
            "kv_cache_memory_fraction",
            "in (0, 0.95]",
            self.kv_cache_memory_fraction,
        )
        _require(self.max_num_seqs >= 1, "max_num_seqs", ">= 1", self.max_num_seqs)
        _require(
            self.max_num_batched_tokens >= self.block_size,
            "max_num_batched_tokens",
            f">= block_size ({self.block_size})",
            self.max_num_batched_tokens,
        )
        if self.max_model_len is not None:
            _require(self.max_model_len >= 2, "max_model_len", ">= 2", self.max_model_len)
        _require(
            self.tensor_parallel_size >= 1,
            "tensor_parallel_size",
            ">= 1",
            self.tensor_parallel_size,
        )
        _require(self.seed >= 0, "seed", ">= 0", self.seed)

    @classmethod
    def from_dict(cls, values: dict) -> EngineConfig:
        """Build from a plain dict, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown engine config field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def _require(ok: bool, field_name: str, allowed: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"EngineConfig.{field_name} must be {allowed}, got {value!r}")
