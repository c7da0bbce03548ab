"""ModelRunner: one rank's model and KV cache. Loads weights, allocates the paged cache from a
memory budget, and runs one forward over a flattened batch."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kernels.cpu_elementwise import CpuElementwise
from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.host_memory import huge_pages_hint, keep_freed_host_memory
from serve_app.engine.layers.attention import (
    cpu_kernel_unavailable_reason,
    kernel_cache_dir,
    make_attention_backend,
)
from serve_app.engine.layers.embedding import ParallelLMHead
from serve_app.engine.layers.linear import pack_projection_weights, warm_up_packed_projections
from serve_app.engine.layers.packed_linear import onednn_packing_available
from serve_app.engine.loader import load_weights, read_architecture
from serve_app.engine.model_input import ModelInput
from serve_app.engine.models.architecture import ModelArchitecture
from serve_app.engine.models.registry import model_class_for
from serve_app.engine.parallel import ParallelContext

logger = logging.getLogger(__name__)

# At most this much work per warm-up pass (the decode sizes, then a full token budget): ~5 s
# at the dev box's 400 GFLOP/s. The bench preset needs 0.33 TFLOP in all; an 8B model would
# stop near batch size 50 and build larger ones on first use.
GEMM_WARMUP_MAX_FLOPS = 2e12
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


def resolve_attention_backend(config: EngineConfig, device: torch.device) -> str:
    """`auto`: triton on CUDA; on CPU the native kernel (`cpu`) when it builds here, else
    the torch reference, with a warning that says why."""
    if config.attention_backend != "auto":
        return config.attention_backend
    if device.type == "cuda":
        return "triton"
    reason = cpu_kernel_unavailable_reason()
    if reason is None:
        return "cpu"
    logger.warning(
        "attention_backend 'auto' falls back to 'torch' on CPU (slower decodes): %s", reason
    )
    return "torch"


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
        self.packed_weights = (
            config.cpu_packed_weights
            and self.device.type == "cpu"
            and self.dtype == torch.float32
            and onednn_packing_available()
        )
        if self.packed_weights:
            pack_projection_weights(self.model)
            if config.cpu_gemm_warmup:
                self._warm_up_packed_gemms()
        # The `cpu` backend's fused elementwise kernels, for the model's layers and the sampler.
        self.native_elementwise = (
            use_native_elementwise(self.model) if self.attention_backend == "cpu" else None
        )
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _warm_up_packed_gemms(self) -> None:
        """Every decode batch size (1..max_num_seqs, smallest first: the LM head sees at most
        one row per sequence) and a full token budget, so that no step pays for building a
        GEMM kernel, within GEMM_WARMUP_MAX_FLOPS each: a large model stops at a smaller
        batch size, and the larger ones build on first use. Tried on the bench workload: its
        first run after a two-request warm-up took 7.2 s, later ones with the same batch sizes
        6.1-6.2 s."""
        started = time.perf_counter()
        max_num_seqs = self.config.max_num_seqs
        modules = list(self.model.modules())
        body = [m for m in modules if not isinstance(m, ParallelLMHead)]
        warmed = warm_up_packed_projections(
            modules, list(range(1, max_num_seqs + 1)), GEMM_WARMUP_MAX_FLOPS
        )
        budget = self.config.max_num_batched_tokens
        budget_warmed = warm_up_packed_projections(body, [budget], GEMM_WARMUP_MAX_FLOPS)
        logger.info(
            "packed GEMM kernels built for batch sizes 1-%d%s in %.2f s%s",
            warmed,
            f" and {budget}" if budget_warmed else "",
            time.perf_counter() - started,
            f"; up to {max_num_seqs} they build on first use (over the warm-up's FLOP budget)"
            if warmed < max_num_seqs
            else "",
        )

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


def use_native_elementwise(model: torch.nn.Module) -> CpuElementwise | None:
    """The `cpu` backend's fused kernels (norm, SiLU-and-mul, rotary + KV write) in every
    layer that takes them: those with a `native` slot (they fall back to torch ops on inputs
    the kernels do not take)."""
    from kernels.cpu_elementwise import load_cpu_elementwise
    from kernels.native_build import NativeBuildError

    try:
        kernels = load_cpu_elementwise(kernel_cache_dir())
    except NativeBuildError as error:
        logger.warning("native elementwise kernels unavailable, torch ops instead: %s", error)
        return None
    for module in model.modules():
        if hasattr(module, "native"):
            module.native = kernels
    return kernels


def _host_available_memory_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo")
