"""Launcher of the native CPU elementwise kernels (serve_kernels/csrc/cpu_elementwise.c): the
residual add fused with RMSNorm, SiLU-and-mul, the rotary embedding of q and k fused with
the K/V cache write, and a row-wise argmax for the sampler; float32, one pass each over
contiguous rows. serve_app/engine/fast_paths.py swaps them into a loaded model in place of
the torch ops of layers/norm.py, activation.py, rotary.py and the sampler's argmax: the same
results up to float rounding, the rotation and the argmax exactly (bench/README.md has the
measurements).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from serve_kernels.native_build import load_native_library, threads_for


class CpuElementwise:
    """The kernels, built once per process and cache directory (load_cpu_elementwise)."""

    def __init__(self, cache_dir: Path, extra_flags: tuple[str, ...] = ()) -> None:
        """`extra_flags`: see native_build.load_native_library."""
        native = load_native_library("cpu_elementwise", cache_dir, extra_flags)
        self.library_path = native.path
        self._add_rms_norm = native.library.add_rms_norm_f32
        self._add_rms_norm.restype = None
        self._add_rms_norm.argtypes = (
            [ctypes.c_void_p] * 4
            + [ctypes.c_int] * 2
            + [
                ctypes.c_float,
                ctypes.c_int,
            ]
        )
        self._silu_and_mul = native.library.silu_and_mul_f32
        self._silu_and_mul.restype = None
        self._silu_and_mul.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] * 3
        self._argmax_rows = native.library.argmax_rows_f32
        self._argmax_rows.restype = None
        pointer, integer = ctypes.c_void_p, ctypes.c_int
        self._argmax_rows.argtypes = [pointer, integer, integer, pointer, integer]
        self._rotary_store_kv = native.library.rotary_store_kv_f32
        self._rotary_store_kv.restype = None
        self._rotary_store_kv.argtypes = (
            [ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 6 + [ctypes.c_int] * 5
        )

    @staticmethod
    def supports(*tensors: torch.Tensor) -> bool:
        """Contiguous float32 CPU tensors (anything else takes the torch ops)."""
        return all(
            t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
            for t in tensors
        )

    def add_rms_norm(
        self,
        x: torch.Tensor | None,  # (tokens, hidden), or None: normalize `residual` as it is
        residual: torch.Tensor,  # (tokens, hidden): x is added into it in place
        weight: torch.Tensor,  # (hidden,)
        eps: float,
    ) -> torch.Tensor:
        """Returns the normalized rows; `residual` then holds residual + x."""
        tensors = (residual, weight) if x is None else (x, residual, weight)
        assert self.supports(*tensors), "caller checks supports() first"
        assert x is None or x.shape == residual.shape
        tokens, hidden = residual.shape
        out = torch.empty_like(residual)
        self._add_rms_norm(
            None if x is None else x.data_ptr(),
            residual.data_ptr(),
            weight.data_ptr(),
            out.data_ptr(),
            tokens,
            hidden,
            eps,
            threads_for(residual.numel()),
        )
        return out

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(tokens, 2 * inter) [gate | up] -> (tokens, inter) silu(gate) * up."""
        assert self.supports(gate_up), "caller checks supports() first"
        tokens, width = gate_up.shape
        out = torch.empty(tokens, width // 2, dtype=gate_up.dtype)
        self._silu_and_mul(
            gate_up.data_ptr(), out.data_ptr(), tokens, width // 2, threads_for(gate_up.numel())
        )
        return out

    def argmax_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, cols) -> (rows,) int64: torch.argmax(x, dim=-1)'s answers (the first maximum;
        the first NaN where a row has one), rows spread over the threads."""
        assert self.supports(x) and x.dim() == 2 and x.shape[1] > 0, "caller checks first"
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self._argmax_rows(
            x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr(), threads_for(x.numel())
        )
        return out

    def supports_rotary_store(self, qkv: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """float32 CPU qkv rows (unit column stride) and a contiguous float32 cache."""
        return (
            qkv.dim() == 2
            and qkv.device.type == "cpu"
            and qkv.dtype == torch.float32
            and qkv.stride(1) == 1
            and k_cache.dtype == torch.float32
            and k_cache.is_contiguous()
        )

    def rotary_store_kv(
        self,
        qkv: torch.Tensor,  # (tokens, >= (heads + 2 * kv_heads) * head_dim), unit column stride
        positions: torch.Tensor,  # (tokens,) int64
        cos_sin: torch.Tensor,  # (max_position, 2, head_dim): [cos | cos], [-sin | sin]
        k_cache: torch.Tensor,  # (num_blocks, block_size, kv_heads, head_dim)
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # (tokens,) int64
        num_heads: int,
    ) -> torch.Tensor:
        """Rotates q and k of every token, writes k and v to the token's cache slot; returns
        the rotated queries (tokens, num_heads, head_dim), contiguous."""
        assert self.supports_rotary_store(qkv, k_cache), "caller checks first"
        assert v_cache.is_contiguous() and cos_sin.is_contiguous()
        num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
        assert qkv.shape[1] >= (num_heads + 2 * num_kv_heads) * head_dim
        positions = positions.to(torch.int64).contiguous()
        slot_mapping = slot_mapping.to(torch.int64).contiguous()
        tokens = qkv.shape[0]
        query = torch.empty(tokens, num_heads, head_dim, dtype=qkv.dtype)
        self._rotary_store_kv(
            qkv.data_ptr(),
            qkv.stride(0),
            positions.data_ptr(),
            cos_sin.data_ptr(),
            query.data_ptr(),
            k_cache.data_ptr(),
            v_cache.data_ptr(),
            slot_mapping.data_ptr(),
            tokens,
            num_heads,
            num_kv_heads,
            head_dim,
            threads_for(qkv.shape[0] * (num_heads + 2 * num_kv_heads) * head_dim),
        )
        return query


@functools.cache
def load_cpu_elementwise(cache_dir: Path) -> CpuElementwise:
    """The process's kernels for `cache_dir`, built on first use; raises NativeBuildError."""
    return CpuElementwise(cache_dir)
