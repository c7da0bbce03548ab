"""kernels.prefill_attention and kernels.paged_attention (mixed batches, split and unified)
against the references: prefills from empty, chunks after a cached prefix, one-token
chunks, lengths that end mid-block, GQA ratios, poisoned out."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.paged_attention import paged_attention
from kernels.prefill_attention import paged_prefill_attention
from kernels.tiling import PrefillTiles

# (context_len, new tokens): full prefill, chunk after a cached prefix (prefix-cache hit or
# earlier chunk), a one-token chunk, a chunk that ends exactly on a block boundary.
SEQUENCES = [(13, 13), (29, 11), (9, 1), (32, 7)]


def reference_mixed(batch, num_decode_seqs: int) -> torch.Tensor:
    return reference.paged_attention(
        **batch.upcast(),
        block_tables=batch.block_tables,
        query_start_loc=batch.query_start_loc_host,
        context_lens=batch.context_lens_host,
        num_decode_seqs=num_decode_seqs,
        scale=batch.scale,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("query_group_size", "head_dim", "block_size"),
    [(1, 64, 16), (2, 64, 8), (4, 64, 16), (8, 64, 8), (2, 128, 16)],
)
def test_prefill_matches_reference(
    paged_batch, check_close, dtype, query_group_size, head_dim, block_size
):
    context_lens = [context for context, _ in SEQUENCES]
    query_lens = [new for _, new in SEQUENCES]
    batch = paged_batch(
        context_lens, query_lens, 2, query_group_size, head_dim, block_size, dtype, 11
    )
    out = batch.poisoned_out()
    paged_prefill_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.query_start_loc,
        batch.context_lens,
        max(query_lens),
        batch.scale,
        out=out,
    )
    check_close(out, reference_mixed(batch, 0), dtype)


@pytest.mark.parametrize("query_group_size", [1, 4])
def test_prefill_several_query_tiles(paged_batch, check_close, query_group_size):
    """Small query tiles, so one chunk spans several tiles with different causal limits."""
    batch = paged_batch([40, 19], [23, 19], 1, query_group_size, 64, 8, torch.float32, seed=5)
    group = max(1, query_group_size)
    tiles = PrefillTiles(head_dim=64, group=group, query_tokens=16 // group, tokens=16, num_warps=4)
    out = batch.poisoned_out()
    paged_prefill_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.query_start_loc,
        batch.context_lens,
        23,
        batch.scale,
        tiles=tiles,
        out=out,
    )
    check_close(out, reference_mixed(batch, 0), torch.float32)


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mixed_batch_matches_reference(paged_batch, check_close, unified, dtype):
    # Three decodes (context 1, mid-block, long) then prefill chunks.
    context_lens = [1, 23, 50, 13, 29, 9]
    query_lens = [1, 1, 1, 13, 11, 1]
    batch = paged_batch(context_lens, query_lens, 2, 4, 64, 16, dtype, seed=13)
    out = batch.poisoned_out()
    paged_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.query_start_loc,
        batch.context_lens,
        batch.context_lens_host,
        3,
        max(query_lens),
        batch.scale,
        unified=unified,
        num_splits=None if unified else 2,
        out=out,
    )
    check_close(out, reference_mixed(batch, 3), dtype)
