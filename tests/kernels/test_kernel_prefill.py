"""kernels.prefill_attention and kernels.paged_attention (mixed batches, split and unified)
against the references: prefills from empty, chunks after a cached prefix, one-token
chunks, lengths that end mid-block, GQA ratios, poisoned out."""

from __future__ import annotations

import pytest
import torch

from serve_kernels.tiling import PrefillTiles

# (context_len, new tokens): full prefill, chunk after a cached prefix (prefix-cache hit or
# earlier chunk), a one-token chunk, a chunk that ends exactly on a block boundary.
SEQUENCES = [(13, 13), (29, 11), (9, 1), (32, 7)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("query_group_size", "head_dim", "block_size"),
    [(1, 64, 16), (2, 64, 8), (4, 64, 16), (8, 64, 8), (2, 128, 16), (1, 96, 8)],
)
def test_prefill_matches_reference(
    paged_batch, check_close, dtype, query_group_size, head_dim, block_size
):
    context_lens = [context for context, _ in SEQUENCES]
    query_lens = [new for _, new in SEQUENCES]
    batch = paged_batch(
        context_lens, query_lens, 2, query_group_size, head_dim, block_size, dtype, 11
    )
    check_close(batch.prefill(), batch.reference_mixed(0), dtype)


@pytest.mark.parametrize("query_group_size", [1, 4])
def test_prefill_several_query_tiles(paged_batch, check_close, query_group_size):
    """Small query tiles, so one chunk spans several tiles with different causal limits."""
    batch = paged_batch([40, 19], [23, 19], 1, query_group_size, 64, 8, torch.float32, seed=5)
    tiles = PrefillTiles(
        head_dim=64,
        group=query_group_size,
        query_tokens=16 // query_group_size,  # 16 rows, the smallest MMA tile
        tokens=16,
        num_warps=4,
    )
    check_close(batch.prefill(tiles=tiles), batch.reference_mixed(0), torch.float32)


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixed_batch_matches_reference(paged_batch, check_close, unified, dtype):
    # Three decodes (context 1, mid-block, long) then prefill chunks.
    context_lens = [1, 23, 50, 13, 29, 9]
    query_lens = [1, 1, 1, 13, 11, 1]
    batch = paged_batch(context_lens, query_lens, 2, 4, 64, 16, dtype, seed=13)
    out = batch.mixed(3, unified=unified, num_splits=None if unified else 2)
    check_close(out, batch.reference_mixed(3), dtype)
