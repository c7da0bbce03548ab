"""The compiled kernels on a CUDA GPU at sizes the interpreter cannot afford: long contexts
that the launcher splits by itself, bfloat16, large varlen prefill batches."""

from __future__ import annotations

import pytest
import torch

from kernels import reference
from kernels.decode_attention import paged_decode_attention
from kernels.paged_attention import paged_attention
from kernels.tiling import decode_num_splits

pytestmark = pytest.mark.gpu

LONG_CONTEXTS = [1, 15, 16, 17, 300, 1029, 4097, 2048]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("query_group_size", "head_dim"), [(1, 128), (4, 64), (8, 128)])
def test_gpu_decode_long_contexts(paged_batch, check_close, dtype, query_group_size, head_dim):
    batch = paged_batch(LONG_CONTEXTS, [1] * 8, 2, query_group_size, head_dim, 16, dtype, 21)
    # Few sequences and long contexts: the launcher must choose to split.
    assert decode_num_splits(8, 2, max(LONG_CONTEXTS), batch.query.device) > 1
    out = batch.poisoned_out()
    paged_decode_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.context_lens,
        max(LONG_CONTEXTS),
        batch.scale,
        out=out,
    )
    ref = reference.paged_decode_attention(
        **batch.upcast(),
        block_tables=batch.block_tables,
        context_lens=batch.context_lens,
        max_context_len=max(LONG_CONTEXTS),
        scale=batch.scale,
    )
    check_close(out, ref, dtype)


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_mixed_batch_long_prefill(paged_batch, check_close, unified, dtype):
    context_lens = [700, 33, 2000, 1500, 517, 64]
    query_lens = [1, 1, 1, 1500, 300, 64]
    batch = paged_batch(context_lens, query_lens, 4, 4, 128, 16, dtype, seed=22)
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
        out=out,
    )
    ref = reference.paged_attention(
        **batch.upcast(),
        block_tables=batch.block_tables,
        query_start_loc=batch.query_start_loc_host,
        context_lens=batch.context_lens_host,
        num_decode_seqs=3,
        scale=batch.scale,
    )
    check_close(out, ref, dtype)
