"""The engine's `cpu` attention backend: every query token attends through the native kernel
(serve_kernels/cpu_paged_attention.py), which reads the paged cache in place, decodes and prefill
chunks alike in one call per layer (`python -m bench.cpu_attention` measures it against the
reference; bench/README.md, "Numbers behind the engine's code comments"); KV writes go
through the torch reference (or the fused rotary + KV-write kernel of engine/fast_paths.py).
Batches the kernel does not support (another dtype, an unusual head shape) run wholly on
the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from serve_kernels import reference
from serve_kernels.cpu_paged_attention import CpuPagedAttention, load_cpu_paged_attention


class CpuAttentionInputs(Protocol):
    """The fields of the engine's AttentionMetadata this backend reads."""

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    num_decode_seqs: int
    context_lens_host: list[int]
    query_start_loc_host: list[int]


class TokenLayout:
    """Per query token: its sequence and how many cached tokens it sees."""

    def __init__(self, metadata: CpuAttentionInputs) -> None:
        starts = torch.tensor(metadata.query_start_loc_host, dtype=torch.int32)
        query_lens = starts[1:] - starts[:-1]  # (num_seqs,)
        context_lens = torch.tensor(metadata.context_lens_host, dtype=torch.int32)
        num_seqs = len(metadata.context_lens_host)
        self.seqs = torch.repeat_interleave(
            torch.arange(num_seqs, dtype=torch.int32), query_lens
        )  # (num_tokens,)
        offsets = torch.arange(self.seqs.shape[0], dtype=torch.int32) - starts[self.seqs]
        # token j of a chunk of q new tokens in a context of c sees c - q + j + 1 tokens
        seen = context_lens - query_lens
        self.context_lens = seen[self.seqs] + offsets + 1
        self.num_visits = int(self.context_lens.sum())  # (query, key) pairs to attend


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, cache_dir: Path) -> None:
        """Builds the native kernel on first use; raises NativeBuildError when it cannot."""
        self.kernel: CpuPagedAttention = load_cpu_paged_attention(cache_dir)
        # The layout of the step in progress: every layer of a step shares its metadata.
        self._layout: tuple[CpuAttentionInputs, TokenLayout] | None = None

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
        if not self.kernel.supports(query, k_cache):
            return reference.paged_attention_for(query, k_cache, v_cache, metadata, scale)
        layout = self._token_layout(metadata)
        out = torch.empty(query.shape, dtype=query.dtype)
        self.kernel.attend_into(
            out,
            query,
            k_cache,
            v_cache,
            metadata.block_tables,
            layout.seqs,
            layout.context_lens,
            scale,
            num_streamed_tokens=metadata.num_decode_seqs,  # decodes come first
            num_visits=layout.num_visits,
        )
        return out

    def _token_layout(self, metadata: CpuAttentionInputs) -> TokenLayout:
        if self._layout is None or self._layout[0] is not metadata:
            self._layout = (metadata, TokenLayout(metadata))
        return self._layout[1]
