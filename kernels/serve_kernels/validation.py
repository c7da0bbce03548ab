"""Argument checks shared by the Triton launchers: each failure names the argument, what was
expected and what arrived, so a wrong call fails before a kernel reads out of bounds."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


class KernelInputError(ValueError):
    """A launcher argument has the wrong shape, stride, dtype or device."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise KernelInputError(message)


def check_runnable(tensor: torch.Tensor, name: str, interpreted: bool) -> None:
    """Compiled kernels need CUDA memory; the interpreter runs anywhere."""
    require(
        interpreted or tensor.device.type == "cuda",
        f"{name} is on {tensor.device}, but compiled Triton kernels need CUDA tensors; on CPU "
        "set TRITON_INTERPRET=1 before `kernels` is imported, or use attention_backend='torch'",
    )


def check_like(tensor: torch.Tensor, name: str, like: torch.Tensor, like_name: str) -> None:
    """Same dtype and device as `like`."""
    require(
        tensor.dtype == like.dtype,
        f"{name} dtype must equal {like_name} ({like.dtype}), got {tensor.dtype}",
    )
    require(
        tensor.device == like.device,
        f"{name} must be on {like_name} device ({like.device}), got {tensor.device}",
    )


def check_paged_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, int, int, int]:
    """Returns (num_blocks, block_size, num_kv_heads, head_dim)."""
    require(
        k_cache.dim() == 4,
        "k_cache must be 4-D (num_blocks, block_size, num_kv_heads, head_dim), "
        f"got shape {tuple(k_cache.shape)}",
    )
    require(
        v_cache.shape == k_cache.shape,
        f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}",
    )
    require(
        k_cache.dtype in FLOAT_DTYPES,
        f"k_cache dtype must be one of {FLOAT_DTYPES}, got {k_cache.dtype}",
    )
    check_like(v_cache, "v_cache", k_cache, "k_cache's")
    require(
        k_cache.stride() == v_cache.stride(),
        f"k_cache and v_cache must share strides, got {k_cache.stride()} and {v_cache.stride()}",
    )
    require(
        k_cache.stride(-1) == 1,
        f"k_cache/v_cache head_dim stride must be 1, got {k_cache.stride(-1)}",
    )
    return tuple(k_cache.shape)  # type: ignore[return-value]


def check_tokens(
    tensor: torch.Tensor,
    name: str,
    num_heads: int | None,
    head_dim: int,
    like: torch.Tensor,
) -> None:
    """A (num_tokens, num_heads, head_dim) tensor with the cache's dtype and device."""
    require(
        tensor.dim() == 3,
        f"{name} must be 3-D (num_tokens, num_heads, head_dim), got shape {tuple(tensor.shape)}",
    )
    require(
        tensor.shape[2] == head_dim,
        f"{name} head_dim must be the cache's {head_dim}, got {tensor.shape[2]}",
    )
    if num_heads is not None:
        require(
            tensor.shape[1] == num_heads,
            f"{name} must have {num_heads} heads, got {tensor.shape[1]}",
        )
    check_like(tensor, name, like, "the cache's")
    require(tensor.stride(2) == 1, f"{name} head_dim stride must be 1, got {tensor.stride(2)}")


def check_index(
    tensor: torch.Tensor, name: str, shape: tuple[int, ...], like: torch.Tensor
) -> None:
    """An integer index tensor of a fixed shape (-1 = any size) whose last dim is contiguous."""
    require(
        tensor.dim() == len(shape)
        and all(want in (-1, got) for want, got in zip(shape, tensor.shape, strict=True)),
        f"{name} must have shape {shape} (-1 = any), got {tuple(tensor.shape)}",
    )
    require(
        tensor.dtype in INDEX_DTYPES,
        f"{name} dtype must be one of {INDEX_DTYPES}, got {tensor.dtype}",
    )
    require(
        tensor.device == like.device,
        f"{name} must be on the cache's device ({like.device}), got {tensor.device}",
    )
    require(
        tensor.numel() == 0 or tensor.stride(-1) == 1,
        f"{name} last-dim stride must be 1, got {tensor.stride(-1)}",
    )


def check_out(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The caller's output buffer (checked), or a fresh contiguous one."""
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    require(
        tuple(out.shape) == shape,
        f"out must have shape {shape}, got {tuple(out.shape)}",
    )
    require(out.dtype == like.dtype, f"out dtype must be {like.dtype}, got {out.dtype}")
    require(out.device == like.device, f"out must be on {like.device}, got {out.device}")
    require(out.stride(-1) == 1, f"out head_dim stride must be 1, got {out.stride(-1)}")
    return out
