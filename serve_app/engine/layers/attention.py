"""Paged attention behind one interface, with an explicit switch between backends.

`torch` runs the references in kernels/reference.py (the CPU path and the oracle);
`triton` runs the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from kernels import reference
from serve_app.engine.attention_metadata import AttentionMetadata


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
        return reference.paged_attention(
            query,
            k_cache,
            v_cache,
            metadata.block_tables,
            metadata.query_start_loc_host,
            metadata.context_lens_host,
            metadata.num_decode_seqs,
            scale,
            context_lens_tensor=metadata.context_lens,
        )


def make_attention_backend(name: str) -> AttentionBackend:
    """`name` is already resolved from `auto` by the caller (see model_runner)."""
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from kernels.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend must be 'torch' or 'triton', got {name!r}")


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
