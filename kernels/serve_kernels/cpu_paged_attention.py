"""Launcher of the native CPU paged attention (serve_kernels/csrc/cpu_paged_attention.c): each query
token over its sequence's cached context, float32, reading K/V blocks in place.

Each token names its sequence (block-table row) and how many cached tokens it sees (its
position + 1), so decodes and prefill chunks run in one call; unlike the references it
never gathers a sequence's blocks into a padded contiguous copy (bench/README.md has the
measurements).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from serve_kernels.native_build import NativeBuildError, load_native_library, threads_for

MAX_GROUP = 16  # query heads per KV head; the C source's MAX_GROUP
MAX_HEAD_DIM = 256  # the C source's MAX_HEAD_DIM


class CpuPagedAttention:
    """The kernel, built once per process and cache directory (load_cpu_paged_attention)."""

    def __init__(self, cache_dir: Path, extra_flags: tuple[str, ...] = ()) -> None:
        """`extra_flags`: see native_build.load_native_library."""
        native = load_native_library("cpu_paged_attention", cache_dir, extra_flags)
        self.library_path = native.path
        self._function = native.library.paged_attention_f32
        self._function.restype = ctypes.c_int
        self._function.argtypes = (
            [ctypes.c_void_p] * 7
            + [ctypes.c_int] * 6
            + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
        )

    @staticmethod
    def supports(query: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """float32 CPU tensors with shapes the kernel's fixed limits allow."""
        num_heads, head_dim = query.shape[1], query.shape[2]
        num_kv_heads = k_cache.shape[2]
        return (
            query.device.type == "cpu"
            and query.dtype == torch.float32
            and k_cache.dtype == torch.float32
            and num_heads % num_kv_heads == 0
            and num_heads // num_kv_heads <= MAX_GROUP
            and head_dim <= MAX_HEAD_DIM
        )

    def attend_into(
        self,
        out: torch.Tensor,  # (num_tokens, num_heads, head_dim), contiguous
        query: torch.Tensor,  # (num_tokens, num_heads, head_dim)
        k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,  # (num_seqs, max_blocks_per_seq) int32
        token_seqs: torch.Tensor,  # (num_tokens,) int32: each token's block-table row
        token_context_lens: torch.Tensor,  # (num_tokens,) int32: tokens it sees; 0 = skip
        scale: float,
        num_streamed_tokens: int = 0,
        num_visits: int | None = None,
    ) -> None:
        """Writes the rows of every token with a context; rows of skipped tokens are kept.

        The first `num_streamed_tokens` tokens (decodes: each the only reader of its blocks)
        prefetch their next KV block while computing one; later ones (prefill chunks, whose
        tokens re-read the same blocks from cache) do not. `num_visits`, the sum of the
        context lengths (summed here unless the caller kept it), sizes the work: small
        batches run on one thread (native_build.threads_for).
        """
        assert self.supports(query, k_cache), "caller checks supports() first"
        assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the cache is allocated whole"
        assert out.is_contiguous() and out.shape == query.shape and out.dtype == query.dtype
        query = query.contiguous()
        block_tables = block_tables.to(torch.int32).contiguous()
        token_seqs = token_seqs.to(torch.int32).contiguous()
        token_context_lens = token_context_lens.to(torch.int32).contiguous()
        num_tokens, num_heads, head_dim = query.shape
        if num_visits is None:
            num_visits = int(token_context_lens.sum())
        status = self._function(
            query.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            block_tables.data_ptr(),
            token_seqs.data_ptr(),
            token_context_lens.data_ptr(),
            out.data_ptr(),
            num_tokens,
            num_heads,
            k_cache.shape[2],
            head_dim,
            k_cache.shape[1],
            block_tables.shape[1],
            scale,
            num_streamed_tokens,
            threads_for(num_visits * num_heads * head_dim),
        )
        if status == -2:
            raise MemoryError(
                f"cpu paged attention: no memory for the work list of {num_tokens} tokens"
            )
        assert status == 0, "shapes were checked by supports()"

    def decode(
        self,
        query: torch.Tensor,  # (num_seqs, num_heads, head_dim): one new token per sequence
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,  # (num_seqs,)
        scale: float,
    ) -> torch.Tensor:
        """reference.paged_decode_attention's contract."""
        out = torch.empty(query.shape, dtype=query.dtype)
        seqs = torch.arange(query.shape[0], dtype=torch.int32)
        self.attend_into(
            out, query, k_cache, v_cache, block_tables, seqs, context_lens, scale, len(seqs)
        )
        return out


@functools.cache
def load_cpu_paged_attention(cache_dir: Path) -> CpuPagedAttention:
    """The process's kernel for `cache_dir`, built on first use; raises NativeBuildError."""
    return CpuPagedAttention(cache_dir)


__all__ = ["CpuPagedAttention", "NativeBuildError", "load_cpu_paged_attention"]
