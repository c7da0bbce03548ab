"""Tile sizes for the attention kernels, picked from head_dim and the GQA ratio.

Every tile dimension that feeds `tl.dot` is a power of two and at least 16 (the smallest
MMA shape on NVIDIA GPUs; the interpreter would accept less and hide the bug). Query heads
that share a KV head are packed into the rows of one tile, so a KV tile is loaded once for
the whole group instead of once per query head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from serve_kernels.validation import KernelInputError, require

MIN_DOT = 16
# Below this many cached tokens per split, splitting a decode costs more than it gains.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 32


@dataclass(frozen=True, slots=True)
class DecodeTiles:
    head_dim: int  # padded head_dim
    group: int  # rows: query heads sharing one KV head, padded
    tokens: int  # KV tokens per loop iteration
    num_warps: int


@dataclass(frozen=True, slots=True)
class PrefillTiles:
    head_dim: int
    group: int  # query heads per token, padded (power of two, may be < 16)
    query_tokens: int  # query tokens per tile; rows = query_tokens * group
    tokens: int
    num_warps: int

    @property
    def rows(self) -> int:
        return self.query_tokens * self.group


def check_tiles(tiles: DecodeTiles | PrefillTiles, head_dim: int, query_group_size: int) -> None:
    """Caller-chosen tiles (tests, tuning) must fit the problem and be valid MMA shapes."""
    rows = tiles.rows if isinstance(tiles, PrefillTiles) else tiles.group
    dims = {"head_dim": tiles.head_dim, "rows": rows, "tokens": tiles.tokens}
    for name, size in dims.items():
        if size < MIN_DOT or size & (size - 1):
            raise KernelInputError(f"tile {name} must be a power of two >= {MIN_DOT}, got {size}")
    require(
        tiles.head_dim >= head_dim and tiles.group >= query_group_size,
        f"tiles {tiles} too small for head_dim {head_dim} and "
        f"{query_group_size} query heads per kv head",
    )


def padded_head_dim(head_dim: int) -> int:
    return max(MIN_DOT, triton.next_power_of_2(head_dim))


def decode_tiles(head_dim: int, query_group_size: int) -> DecodeTiles:
    padded = padded_head_dim(head_dim)
    group = max(MIN_DOT, triton.next_power_of_2(query_group_size))
    # Keep the K/V tile (tokens x head_dim) around 8 KiB of fp16 per operand.
    tokens = 64 if padded <= 64 else 32
    return DecodeTiles(head_dim=padded, group=group, tokens=tokens, num_warps=4)


def prefill_tiles(head_dim: int, query_group_size: int) -> PrefillTiles:
    padded = padded_head_dim(head_dim)
    group = triton.next_power_of_2(query_group_size)
    # Rows of the query tile: 128 for small heads, 64 for large ones (register pressure of
    # the (rows x head_dim) fp32 accumulator); never fewer query tokens than one.
    rows = 128 if padded <= 64 else 64
    query_tokens = max(1, rows // group, MIN_DOT // group)
    tokens = 64 if padded <= 64 else 32
    num_warps = 8 if query_tokens * group * padded >= 128 * 128 else 4
    return PrefillTiles(
        head_dim=padded, group=group, query_tokens=query_tokens, tokens=tokens, num_warps=num_warps
    )


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact float32 products (TF32 would miss the 1e-5 contract)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def num_compute_units(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: splitting only adds work


def decode_num_splits(
    num_seqs: int, num_kv_heads: int, max_context_len: int, device: torch.device
) -> int:
    """Split long contexts until the grid fills the GPU about twice over (flash-decoding)."""
    programs = max(1, num_seqs * num_kv_heads)
    wanted = triton.cdiv(2 * num_compute_units(device), programs)
    worth = max(1, max_context_len // MIN_TOKENS_PER_SPLIT)
    return max(1, min(wanted, worth, MAX_SPLITS))
