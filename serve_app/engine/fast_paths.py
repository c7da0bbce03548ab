"""CPU fast paths, applied to a loaded model in one place: the model and its layers never
mention them (the pattern of gpt-fast's quantize.py, which swaps modules after loading).

Unless `EngineConfig.cpu_fast_paths` is false:
- float32 projection weights on CPU are packed once for oneDNN (layers/packed_linear.py;
  `cpu_packed_weights`), and their GEMM kernels built at start-up (`cpu_gemm_warmup`);
- with the `cpu` attention backend, the native elementwise kernels
  (serve_kernels/cpu_elementwise.py)
  take over RMSNorm with its residual add, SiLU-and-mul, the rotary embedding fused with the
  K/V cache write, and the sampler's argmax. Each native module is the plain one with its
  `forward` (or `attend`) replaced, falling back to the plain one on inputs its kernel does
  not take: the same results up to float rounding (tests/engine/test_fast_paths.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from serve_app.engine.attention_backend import kernel_cache_dir
from serve_app.engine.attention_metadata import AttentionMetadata
from serve_app.engine.config import EngineConfig
from serve_app.engine.layers.activation import SiluAndMul
from serve_app.engine.layers.embedding import ParallelLMHead
from serve_app.engine.layers.linear import PackableProjection
from serve_app.engine.layers.norm import RMSNorm
from serve_app.engine.layers.packed_linear import onednn_packing_available
from serve_app.engine.models.llama import KVCache, LlamaAttention
from serve_kernels.cpu_elementwise import CpuElementwise, load_cpu_elementwise
from serve_kernels.native_build import NativeBuildError

logger = logging.getLogger(__name__)

# At most this much work per warm-up pass (the decode sizes, then a full token budget): a few
# seconds at the dev box's rate; a large model builds its larger batch sizes on first use
# (bench/README.md, "Numbers behind the engine's code comments").
GEMM_WARMUP_MAX_FLOPS = 2e12


@dataclass(frozen=True, slots=True)
class FastPaths:
    """What apply_fast_paths swapped into a model."""

    packed_weights: bool = False
    elementwise: CpuElementwise | None = None

    def argmax(self, scores: torch.Tensor) -> torch.Tensor:
        """The sampler's argmax, native where it applies (torch's runs on one thread)."""
        kernels = self.elementwise
        if kernels is not None and scores.shape[1] > 0 and kernels.supports(scores):
            return kernels.argmax_rows(scores)
        return scores.argmax(dim=-1)


def apply_fast_paths(
    model: nn.Module,
    config: EngineConfig,
    device: torch.device,
    dtype: torch.dtype,
    attention_backend: str,
) -> FastPaths:
    """Swap into the loaded `model` the fast paths that its config and this machine allow."""
    if not config.cpu_fast_paths:
        return FastPaths()
    packed_weights = (
        config.cpu_packed_weights
        and device.type == "cpu"
        and dtype == torch.float32
        and onednn_packing_available()
    )
    if packed_weights:
        pack_projection_weights(model)
        if config.cpu_gemm_warmup:
            warm_up_packed_gemms(model, config)
    try:
        kernels = load_cpu_elementwise(kernel_cache_dir()) if attention_backend == "cpu" else None
    except NativeBuildError as error:
        logger.warning("native elementwise kernels unavailable, torch ops instead: %s", error)
        kernels = None
    if kernels is not None:
        for module in model.modules():
            native_class = NATIVE_MODULES.get(type(module))
            if native_class is not None:
                module.__class__ = native_class  # same parameters, buffers and place
                module.kernels = kernels
    return FastPaths(packed_weights, kernels)


class NativeRMSNorm(RMSNorm):
    kernels: CpuElementwise

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (x, self.weight) if residual is None else (x, residual, self.weight)
        if x.dim() != 2 or not self.kernels.supports(*tensors):
            return super().forward(x, residual)
        if residual is None:  # the first layer: x itself becomes the residual
            return self.kernels.add_rms_norm(None, x, self.weight, self.eps), x
        return self.kernels.add_rms_norm(x, residual, self.weight, self.eps), residual


class NativeSiluAndMul(SiluAndMul):
    kernels: CpuElementwise

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        if gate_up.dim() == 2 and self.kernels.supports(gate_up):
            return self.kernels.silu_and_mul(gate_up)
        return super().forward(gate_up)


class NativeRotaryLlamaAttention(LlamaAttention):
    kernels: CpuElementwise

    def attend(
        self,
        positions: torch.Tensor,
        qkv: torch.Tensor,
        kv_cache: KVCache,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """One pass rotates q and k and writes k and v to their cache slots."""
        if self.qk_norm or not self.kernels.supports_rotary_store(qkv, kv_cache[0]):
            return super().attend(positions, qkv, kv_cache, metadata)
        q = self.kernels.rotary_store_kv(
            qkv, positions, self.rotary.cos_sin, *kv_cache, metadata.slot_mapping, self.num_heads
        )
        return self.attn.attend_stored(q, kv_cache, metadata)


NATIVE_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    RMSNorm: NativeRMSNorm,
    SiluAndMul: NativeSiluAndMul,
    LlamaAttention: NativeRotaryLlamaAttention,
}


def pack_projection_weights(model: nn.Module) -> int:
    """Pack every PackableProjection's weight; returns how many were packed."""
    projections = [m for m in model.modules() if isinstance(m, PackableProjection)]
    projection_ids = {id(m) for m in projections}
    # Weights some other layer reads too (tied embeddings) keep their plain copy.
    shared = {
        p.data_ptr()
        for m in model.modules()
        if id(m) not in projection_ids
        for p in m.parameters(recurse=False)
    }
    for module in projections:
        module.pack_weight(release=module.weight.data_ptr() not in shared)
    return len(projections)


def warm_up_packed_gemms(model: nn.Module, config: EngineConfig) -> None:
    """Every decode batch size (1..max_num_seqs, smallest first: the LM head sees at most one
    row per sequence) and a full token budget, so that no step pays for building a GEMM
    kernel, within GEMM_WARMUP_MAX_FLOPS each: a large model stops at a smaller batch size,
    and the larger ones build on first use."""
    started = time.perf_counter()
    max_num_seqs = config.max_num_seqs
    modules = list(model.modules())
    body = [m for m in modules if not isinstance(m, ParallelLMHead)]
    warmed = warm_up_packed_projections(
        modules, list(range(1, max_num_seqs + 1)), GEMM_WARMUP_MAX_FLOPS
    )
    budget = config.max_num_batched_tokens
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


def warm_up_packed_projections(
    modules: list[nn.Module], token_counts: list[int], max_flops: float = math.inf
) -> int:
    """Run each packed projection shape among `modules` (one layer per shape: they share
    oneDNN's kernels, built per shape and token count on first use) once per token count, on
    zeros, in the order given, stopping before the product that would pass `max_flops`.
    Returns how many of the token counts every shape ran at."""
    by_shape: dict[tuple[int, int, bool], PackableProjection] = {}
    for module in modules:
        if isinstance(module, PackableProjection) and module.packed_weight is not None:
            has_bias = getattr(module, "bias", None) is not None
            by_shape.setdefault((*module.packed_weight.shape, has_bias), module)
    flops = 0.0
    with torch.inference_mode():
        for done, tokens in enumerate(token_counts):
            for (out_features, in_features, has_bias), module in by_shape.items():
                cost = 2.0 * tokens * out_features * in_features
                if flops + cost > max_flops:
                    return done
                module.project(torch.zeros(tokens, in_features), module.bias if has_bias else None)
                flops += cost
    return len(token_counts)
