"""Paged attention behind one interface: the layer stores this step's K/V and attends through
whichever backend it was built with (attention_backend.py chooses and builds it)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

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
        """Attention over the cache alone, for callers that wrote this step's K/V themselves."""
        return self.backend.attend(query, *kv_cache, metadata, self.scale)
