"""kernels.decode_attention against reference.paged_decode_attention: ragged lengths (1, mid-
block, whole blocks), shuffled strided block tables, GQA ratios, split counts, poisoned out."""

from __future__ import annotations

import pytest
import torch

from serve_kernels.decode_attention import paged_decode_attention
from serve_kernels.tiling import DecodeTiles, padded_head_dim
from serve_kernels.validation import KernelInputError

# Length 1, mid-block, exactly one block, one past a block, several blocks ending mid-block.
CONTEXT_LENS = [1, 6, 16, 17, 45]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("query_group_size", "head_dim", "block_size", "num_splits"),
    [(1, 64, 16, 1), (2, 64, 8, 2), (4, 64, 16, 3), (8, 64, 8, 1), (4, 128, 16, 2), (2, 96, 8, 2)],
)
def test_decode_matches_reference(
    paged_batch, check_close, dtype, query_group_size, head_dim, block_size, num_splits
):
    batch = paged_batch(
        CONTEXT_LENS, [1] * 5, 2, query_group_size, head_dim, block_size, dtype, seed=7
    )
    # 16-token tiles so that several splits hold tokens even at these short lengths.
    tiles = DecodeTiles(head_dim=padded_head_dim(head_dim), group=16, tokens=16, num_warps=4)
    check_close(batch.decode(num_splits=num_splits, tiles=tiles), batch.reference_decode(), dtype)


@pytest.mark.parametrize("num_splits", [2, 4, 5])
def test_decode_split_counts(paged_batch, check_close, num_splits):
    """More splits than some sequences have tiles: empty splits must not disturb the combine."""
    batch = paged_batch(CONTEXT_LENS, [1] * 5, 1, 2, 64, 16, torch.float32, seed=num_splits)
    tiles = DecodeTiles(head_dim=64, group=16, tokens=16, num_warps=4)
    out = batch.decode(num_splits=num_splits, tiles=tiles)
    check_close(out, batch.reference_decode(), torch.float32)


def test_decode_default_tiles_and_splits(paged_batch, check_close):
    batch = paged_batch([3, 70], [1, 1], 2, 4, 64, 16, torch.float16, seed=3)
    check_close(batch.decode(), batch.reference_decode(), torch.float16)


def test_decode_rejects_query_heads_not_multiple_of_kv_heads(paged_batch):
    batch = paged_batch([4], [1], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(KernelInputError, match=r"query heads \(3\) must be a multiple"):
        paged_decode_attention(
            batch.query[:, :3],
            batch.k_cache,
            batch.v_cache,
            batch.block_tables,
            batch.context_lens,
            4,
            batch.scale,
        )


def test_decode_rejects_context_past_block_table(paged_batch):
    batch = paged_batch([4], [1], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(KernelInputError, match=r"max_context_len \(100\) exceeds"):
        paged_decode_attention(
            batch.query,
            batch.k_cache,
            batch.v_cache,
            batch.block_tables,
            batch.context_lens,
            100,
            batch.scale,
        )


def test_decode_rejects_misshapen_block_tables(paged_batch):
    batch = paged_batch([4, 5], [1, 1], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(KernelInputError, match=r"block_tables must have shape \(2, -1\)"):
        paged_decode_attention(
            batch.query,
            batch.k_cache,
            batch.v_cache,
            batch.block_tables[:1],
            batch.context_lens,
            5,
            batch.scale,
        )
