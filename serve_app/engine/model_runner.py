"""ModelRunner: one rank's model and KV cache. Loads weights, allocates the paged cache from a
memory budget, and runs one forward over a flattened batch."""

from __future__ import annotations

from pathlib import Path

import torch

from serve_app.engine.attention_backend import make_attention_backend, resolve_attention_backend
from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.fast_paths import apply_fast_paths
from serve_app.engine.host_memory import huge_pages_hint, keep_freed_host_memory
from serve_app.engine.loader import load_weights
from serve_app.engine.model_files import read_architecture
from serve_app.engine.model_input import ModelInput
from serve_app.engine.models.architecture import ModelArchitecture
from serve_app.engine.models.registry import model_class_for
from serve_app.engine.parallel.context import ParallelContext

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(config: EngineConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("EngineConfig.device is 'cuda' but no CUDA device is available")
    return torch.device(config.device)


def resolve_dtype(
    config: EngineConfig, device: torch.device, arch: ModelArchitecture
) -> torch.dtype:
    if config.dtype != "auto":
        return DTYPES[config.dtype]
    if device.type == "cpu":
        return torch.float32
    return (
        DTYPES.get(arch.torch_dtype or "", torch.bfloat16)
        if arch.torch_dtype != "float32"
        else torch.float32
    )


def resolve_max_model_len(config: EngineConfig, arch: ModelArchitecture) -> int:
    limit = arch.max_position_embeddings
    if arch.sliding_window is not None:
        limit = min(limit, arch.sliding_window)  # beyond the window full attention is wrong
    if config.max_model_len is None:
        return limit
    if config.max_model_len > limit:
        raise ConfigError(
            f"EngineConfig.max_model_len must be <= {limit} for this model "
            f"(max_position_embeddings / sliding_window), got {config.max_model_len}"
        )
    return config.max_model_len


class ModelRunner:
    def __init__(self, config: EngineConfig, model_dir: Path, ctx: ParallelContext) -> None:
        self.config = config
        self.ctx = ctx
        self.arch = read_architecture(model_dir)
        self.device = resolve_device(config)
        if self.device.type == "cpu":
            keep_freed_host_memory()
            huge_pages_hint()
        self.dtype = resolve_dtype(config, self.device, self.arch)
        self.max_model_len = resolve_max_model_len(config, self.arch)
        self.attention_backend = resolve_attention_backend(config, self.device)
        backend = make_attention_backend(self.attention_backend)
        model_class = model_class_for(self.arch.architecture)
        with torch.device(self.device):
            self.model = model_class(self.arch, ctx, backend, self.max_model_len)
        self.model.to(self.dtype)
        load_weights(self.model, model_dir)
        self.model.eval()
        self.fast_paths = apply_fast_paths(
            self.model, config, self.device, self.dtype, self.attention_backend
        )
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def num_kv_heads_per_rank(self) -> int:
        return self.model.model.layers[0].self_attn.attn.num_kv_heads

    def kv_cache_bytes_per_block(self) -> int:
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        per_layer = 2 * self.config.block_size * self.num_kv_heads_per_rank * self.arch.head_dim
        return per_layer * self.arch.num_layers * element_bytes

    def kv_cache_budget_bytes(self) -> int:
        """This rank's KV budget: explicit bytes, or a fraction of free device memory."""
        if self.config.kv_cache_memory_bytes is not None:
            return self.config.kv_cache_memory_bytes
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            free = _host_available_memory_bytes()
        return int(free * self.config.kv_cache_memory_fraction)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        shape = (
            2,
            self.arch.num_layers,
            num_blocks,
            self.config.block_size,
            self.num_kv_heads_per_rank,
            self.arch.head_dim,
        )
        cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.kv_caches = [
            (cache[0, layer], cache[1, layer]) for layer in range(self.arch.num_layers)
        ]

    @torch.inference_mode()
    def execute(self, model_input: ModelInput) -> torch.Tensor | None:
        """Run the batch; rank 0 gets float32 logits (num_sampled, vocab), others None."""
        device = self.device
        metadata = model_input.attention_metadata(device)
        hidden = self.model(
            model_input.token_ids.to(device, non_blocking=True),
            model_input.positions.to(device, non_blocking=True),
            self.kv_caches,
            metadata,
        )
        if model_input.logits_indices.numel() == 0:
            return None
        hidden = hidden[model_input.logits_indices.to(device)]
        logits = self.model.compute_logits(hidden)
        return logits.float() if logits is not None else None


def _host_available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo")
