"""The engine's `cpu` attention backend: decodes through the native kernel
(kernels/cpu_decode_attention.py), which reads the paged cache in place; prefill chunks and
KV writes through the torch reference. Batches the kernel does not support (another dtype,
an unusual head shape) run wholly on the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from kernels import reference
from kernels.cpu_decode_attention import CpuDecodeAttention, load_cpu_decode_attention


class CpuAttentionInputs(Protocol):
    """The fields of the engine's AttentionMetadata this backend reads."""

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    num_decode_seqs: int
    context_lens_host: list[int]
    query_start_loc_host: list[int]


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, cache_dir: Path) -> None:
        """Builds the native kernel on first use; raises NativeBuildError when it cannot."""
        self.decode: CpuDecodeAttention = load_cpu_decode_attention(cache_dir)

    def store_kv(
        self,
        key: torch.Tensor,  # (tokens, kv_heads, head_dim)
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: CpuAttentionInputs,
    ) -> None:
        reference.store_kv(key, value, k_cache, v_cache, metadata.slot_mapping)

    def attend(
        self,
        query: torch.Tensor,  # (tokens, heads, head_dim)
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: CpuAttentionInputs,
        scale: float,
    ) -> torch.Tensor:
        num_decodes = metadata.num_decode_seqs
        if not num_decodes or not self.decode.supports(query, k_cache):
            return reference.paged_attention(
                query,
                k_cache,
                v_cache,
                metadata.block_tables,
                metadata.query_start_loc_host,
                metadata.context_lens_host,
                num_decodes,
                scale,
                context_lens_tensor=metadata.context_lens,
            )
        decoded = self.decode(
            query[:num_decodes],
            k_cache,
            v_cache,
            metadata.block_tables[:num_decodes],
            metadata.context_lens[:num_decodes],
            scale,
        )
        if num_decodes == len(metadata.context_lens_host):
            return decoded  # a decode-only step: every row is a decode
        out = torch.empty_like(query)
        out[:num_decodes] = decoded
        reference.prefill_attention_into(
            out,
            query,
            k_cache,
            v_cache,
            metadata.block_tables,
            metadata.query_start_loc_host,
            metadata.context_lens_host,
            num_decodes,
            scale,
        )
        return out
