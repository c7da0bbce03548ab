"""The engine's `triton` attention backend: the Triton kernels behind the AttentionBackend
interface of serve_app/engine/layers/attention.py.

Runs on CUDA; on CPU only under the Triton interpreter (TRITON_INTERPRET=1 in the
environment before `kernels` is imported), which is how the tests run it end to end.
Triton is imported here, never by the torch path.
"""

from __future__ import annotations

from typing import Protocol

import torch

try:
    from serve_kernels.paged_attention import paged_attention
    from serve_kernels.store_kv import store_kv
except ImportError as error:  # pragma: no cover - triton ships with Linux torch wheels
    raise ImportError(
        "attention_backend='triton' needs the `triton` package (Linux + CUDA, or "
        "TRITON_INTERPRET=1 on CPU); install it or use attention_backend='torch'"
    ) from error


class PagedAttentionInputs(Protocol):
    """The fields of the engine's AttentionMetadata that the kernels read."""

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    query_start_loc: torch.Tensor
    num_decode_seqs: int
    max_query_len: int
    context_lens_host: list[int]


class TritonAttentionBackend:
    """`unified=True` runs each mixed batch as one prefill-kernel launch (see paged_attention)."""

    name = "triton"

    def __init__(self, unified: bool = False) -> None:
        self.unified = unified

    def store_kv(
        self,
        key: torch.Tensor,  # (tokens, kv_heads, head_dim)
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: PagedAttentionInputs,
    ) -> None:
        store_kv(_unit_stride(key), _unit_stride(value), k_cache, v_cache, metadata.slot_mapping)

    def attend(
        self,
        query: torch.Tensor,  # (tokens, heads, head_dim)
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: PagedAttentionInputs,
        scale: float,
    ) -> torch.Tensor:
        return paged_attention(
            _unit_stride(query),
            k_cache,
            v_cache,
            metadata.block_tables,
            metadata.query_start_loc,
            metadata.context_lens,
            metadata.context_lens_host,
            metadata.num_decode_seqs,
            metadata.max_query_len,
            scale,
            unified=self.unified,
        )


def _unit_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels read head_dim with stride 1; on CPU the projections return transposed
    views (serve_app/engine/layers/linear.py), copied here (on GPU this is a no-op)."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()
