"""Launcher of the native CPU elementwise kernels (kernels/csrc/cpu_elementwise.c): the
residual add fused with RMSNorm, and SiLU-and-mul, float32, one pass each over contiguous
rows. Same results as the torch ops in serve_app/engine/layers (norm.py, activation.py)
up to float rounding (bench/README.md has the measurements).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from kernels.native_build import load_native_library


class CpuElementwise:
    """The kernels, built once per process and cache directory (load_cpu_elementwise)."""

    def __init__(self, cache_dir: Path) -> None:
        native = load_native_library("cpu_elementwise", cache_dir)
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
            torch.get_num_threads(),
        )
        return out

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """(tokens, 2 * inter) [gate | up] -> (tokens, inter) silu(gate) * up."""
        assert self.supports(gate_up), "caller checks supports() first"
        tokens, width = gate_up.shape
        out = torch.empty(tokens, width // 2, dtype=gate_up.dtype)
        self._silu_and_mul(
            gate_up.data_ptr(), out.data_ptr(), tokens, width // 2, torch.get_num_threads()
        )
        return out


_loaded: dict[Path, CpuElementwise] = {}


def load_cpu_elementwise(cache_dir: Path) -> CpuElementwise:
    """The process's kernels for `cache_dir`, built on first use; raises NativeBuildError."""
    if cache_dir not in _loaded:
        _loaded[cache_dir] = CpuElementwise(cache_dir)
    return _loaded[cache_dir]
