"""The one place that chooses the attention backend and builds it; the model's attention
layers receive it (layers/attention.py). `torch` runs the references in serve_kernels/reference.py
(the oracle, and the CPU fallback); `cpu` the native C kernel for decodes and prefill chunks
alike (serve_kernels/cpu_paged_attention.py, built on first use with the machine's C compiler);
`triton` the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import torch

from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.layers.attention import AttentionBackend
from serve_app.engine.model_path import cache_root

logger = logging.getLogger(__name__)


def resolve_attention_backend(config: EngineConfig, device: torch.device) -> str:
    """`auto`: triton on CUDA; on CPU the native kernel (`cpu`) when it builds here, else
    the torch reference, with a warning that says why."""
    if config.attention_backend != "auto":
        return config.attention_backend
    if device.type == "cuda":
        return "triton"
    reason = cpu_kernel_unavailable_reason()
    if reason is None:
        return "cpu"
    logger.warning(
        "attention_backend 'auto' falls back to 'torch' on CPU (slower decodes): %s", reason
    )
    return "torch"


def make_attention_backend(name: str) -> AttentionBackend:
    """`name` is already resolved from `auto` (resolve_attention_backend)."""
    if name == "torch":
        from serve_kernels.torch_backend import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "cpu":
        from serve_kernels.cpu_backend import CpuAttentionBackend
        from serve_kernels.native_build import NativeBuildError

        try:
            return CpuAttentionBackend(kernel_cache_dir())
        except NativeBuildError as error:
            raise ConfigError(
                f"attention_backend='cpu' needs its native kernel, which cannot be built here "
                f"({error}); use attention_backend='torch' or 'auto'"
            ) from error
    if name == "triton":
        from serve_kernels.triton_backend import TritonAttentionBackend

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
    from serve_kernels.cpu_paged_attention import load_cpu_paged_attention
    from serve_kernels.native_build import NativeBuildError

    try:
        load_cpu_paged_attention(cache_dir)
    except NativeBuildError as error:
        return str(error)
    return None
