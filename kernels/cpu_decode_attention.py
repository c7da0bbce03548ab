"""Launcher of the native CPU paged decode attention (kernels/csrc/cpu_decode_attention.c):
one query token per sequence over its cached context, float32, reading K/V blocks in place.

Same contract as `reference.paged_decode_attention`, without its gather of every sequence's
blocks into a padded contiguous copy (bench/README.md has the measurements).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from kernels.native_build import NativeBuildError, load_native_library

MAX_GROUP = 16  # query heads per KV head; the C source's MAX_GROUP
MAX_HEAD_DIM = 256  # the C source's MAX_HEAD_DIM


class CpuDecodeAttention:
    """Callable over one batch of decodes; built once per process and cache directory."""

    def __init__(self, cache_dir: Path) -> None:
        native = load_native_library("cpu_decode_attention", cache_dir)
        self.library_path = native.path
        self._function = native.library.paged_decode_attention_f32
        self._function.restype = ctypes.c_int
        self._function.argtypes = (
            [ctypes.c_void_p] * 6
            + [ctypes.c_int] * 6
            + [
                ctypes.c_float,
                ctypes.c_int,
            ]
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

    def __call__(
        self,
        query: torch.Tensor,  # (num_seqs, num_heads, head_dim)
        k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,  # (num_seqs, max_blocks_per_seq) int32
        context_lens: torch.Tensor,  # (num_seqs,) int32
        scale: float,
    ) -> torch.Tensor:
        assert self.supports(query, k_cache), "caller checks supports() first"
        assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the cache is allocated whole"
        query = query.contiguous()
        block_tables = block_tables.to(torch.int32).contiguous()
        context_lens = context_lens.to(torch.int32).contiguous()
        num_seqs, num_heads, head_dim = query.shape
        out = torch.empty_like(query)
        status = self._function(
            query.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            block_tables.data_ptr(),
            context_lens.data_ptr(),
            out.data_ptr(),
            num_seqs,
            num_heads,
            k_cache.shape[2],
            head_dim,
            k_cache.shape[1],
            block_tables.shape[1],
            scale,
            torch.get_num_threads(),
        )
        assert status == 0, "shapes were checked by supports()"
        return out


_loaded: dict[Path, CpuDecodeAttention] = {}


def load_cpu_decode_attention(cache_dir: Path) -> CpuDecodeAttention:
    """The process's kernel for `cache_dir`, built on first use; raises NativeBuildError."""
    if cache_dir not in _loaded:
        _loaded[cache_dir] = CpuDecodeAttention(cache_dir)
    return _loaded[cache_dir]


__all__ = ["CpuDecodeAttention", "NativeBuildError", "load_cpu_decode_attention"]
