"""Paged attention behind one interface, with an explicit switch between backends.

`torch` runs the references in kernels/reference.py (the oracle, and the CPU fallback);
`cpu` runs attention, decodes and prefill chunks alike, through the native C kernel
(kernels/cpu_paged_attention.py, built on first use with the machine's C compiler), and KV
writes through the reference (Llama-family models write them in their fused rotary + KV
kernel instead, see models/llama.py);
`triton` runs the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from kernels import reference
from serve_app.engine.attention_metadata import AttentionMetadata
from serve_app.engine.config import ConfigError
from serve_app.engine.tiny import cache_root


class AttentionBackend(Protocol):
    name: str

    def store_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> None: ...

    def attend(
        self,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...


class TorchAttentionBackend:
    name = "torch"

    def store_kv(self, key, value, k_cache, v_cache, metadata: AttentionMetadata) -> None:
        reference.store_kv(key, value, k_cache, v_cache, metadata.slot_mapping)

    def attend(self, query, k_cache, v_cache, metadata: AttentionMetadata, scale: float):
        return reference.paged_attention_for(query, k_cache, v_cache, metadata, scale)


def make_attention_backend(name: str) -> AttentionBackend:
    """`name` is already resolved from `auto` by the caller (see model_runner)."""
    if name == "torch":
        return TorchAttentionBackend()
    if name == "cpu":
        from kernels.cpu_backend import CpuAttentionBackend
        from kernels.native_build import NativeBuildError

        try:
            return CpuAttentionBackend(kernel_cache_dir())
        except NativeBuildError as error:
            raise ConfigError(
                f"attention_backend='cpu' needs its native kernel, which cannot be built here "
                f"({error}); use attention_backend='torch' or 'auto'"
            ) from error
    if name == "triton":
        from kernels.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend must be 'torch', 'cpu' or 'triton', got {name!r}")


def kernel_cache_dir() -> Path:
    """Where native kernels are built: `$SERVE_APP_CACHE/kernels` (~/.cache/serve_app)."""
    return cache_root() / "kernels"


def cpu_kernel_unavailable_reason() -> str | None:
    """None when the native CPU attention kernel builds and loads here, else why not (tried once
    per process and cache directory)."""
    return _cpu_kernel_unavailable_reason(kernel_cache_dir())


@cache
def _cpu_kernel_unavailable_reason(cache_dir: Path) -> str | None:
    from kernels.cpu_paged_attention import load_cpu_paged_attention
    from kernels.native_build import NativeBuildError

    try:
        load_cpu_paged_attention(cache_dir)
    except NativeBuildError as error:
        return str(error)
    return None


class Attention(nn.Module):
    """Stores this step's K/V into the layer's cache, then attends over the cache."""

    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, backend: AttentionBackend
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.backend = backend

    def forward(
        self,
        query: torch.Tensor,  # (tokens, heads, head_dim)
        key: torch.Tensor,  # (tokens, kv_heads, head_dim)
        value: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        self.backend.store_kv(key, value, k_cache, v_cache, metadata)
        return self.backend.attend(query, k_cache, v_cache, metadata, self.scale)

    def attend_stored(
        self,
        query: torch.Tensor,  # (tokens, heads, head_dim)
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """Attention when this step's K/V are already in the cache (written by a fused
        rotary + KV-write kernel)."""
        return self.backend.attend(query, *kv_cache, metadata, self.scale)
