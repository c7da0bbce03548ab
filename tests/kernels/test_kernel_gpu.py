"""The compiled kernels on a CUDA GPU at sizes the interpreter cannot afford: long contexts
that the launcher splits by itself, bfloat16, large varlen prefill batches."""

from __future__ import annotations

import pytest
import torch

from serve_kernels.tiling import decode_num_splits

pytestmark = pytest.mark.gpu

LONG_CONTEXTS = [1, 15, 16, 17, 300, 1029, 4097, 2048]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("query_group_size", "head_dim"), [(1, 128), (4, 64), (8, 128)])
def test_gpu_decode_long_contexts(paged_batch, check_close, dtype, query_group_size, head_dim):
    batch = paged_batch(LONG_CONTEXTS, [1] * 8, 2, query_group_size, head_dim, 16, dtype, 21)
    # Few sequences and long contexts: the launcher must choose to split.
    assert decode_num_splits(8, 2, max(LONG_CONTEXTS), batch.query.device) > 1
    check_close(batch.decode(), batch.reference_decode(), dtype)


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_mixed_batch_long_prefill(paged_batch, check_close, unified, dtype):
    context_lens = [700, 33, 2000, 1500, 517, 64]
    query_lens = [1, 1, 1, 1500, 300, 64]
    batch = paged_batch(context_lens, query_lens, 4, 4, 128, 16, dtype, seed=22)
    check_close(batch.mixed(3, unified=unified), batch.reference_mixed(3), dtype)
