"""Launcher argument checks: a wrong call fails with a message naming what is wrong, before
any kernel reads memory."""

from __future__ import annotations

import pytest
import torch

from serve_kernels.tiling import DecodeTiles, PrefillTiles, decode_tiles, prefill_tiles
from serve_kernels.validation import KernelInputError, check_runnable


def test_compiled_kernels_refuse_cpu_tensors():
    with pytest.raises(KernelInputError, match=r"k_cache is on cpu.*TRITON_INTERPRET=1"):
        check_runnable(torch.zeros(1), "k_cache", interpreted=False)
    check_runnable(torch.zeros(1), "k_cache", interpreted=True)


def test_prefill_rejects_query_start_loc_of_wrong_length(paged_batch):
    batch = paged_batch([4, 6], [4, 2], 2, 2, 64, 16, torch.float32, seed=0)
    batch.query_start_loc = batch.query_start_loc[:2]
    with pytest.raises(KernelInputError, match=r"query_start_loc must have shape \(3,\)"):
        batch.prefill()


def test_prefill_rejects_float_context_lens(paged_batch):
    batch = paged_batch([4], [4], 2, 2, 64, 16, torch.float32, seed=0)
    batch.context_lens = batch.context_lens.float()
    with pytest.raises(KernelInputError, match="context_lens dtype must be one of"):
        batch.prefill()


def test_out_of_the_wrong_dtype_is_rejected(paged_batch):
    batch = paged_batch([4], [1], 2, 2, 64, 16, torch.float32, seed=0)
    batch.poisoned_out = lambda: torch.zeros(batch.query.shape, dtype=torch.float16)
    with pytest.raises(KernelInputError, match=r"out dtype must be torch\.float32"):
        batch.decode()


def test_mixed_batch_rejects_more_decodes_than_sequences(paged_batch):
    batch = paged_batch([4, 5], [1, 1], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(KernelInputError, match=r"num_decode_seqs must be in \[0, 2\], got 3"):
        batch.mixed(3)


@pytest.mark.parametrize(
    ("tiles", "message"),
    [
        (DecodeTiles(head_dim=64, group=8, tokens=16, num_warps=4), "tile rows must be"),
        (DecodeTiles(head_dim=64, group=16, tokens=24, num_warps=4), "tile tokens must be"),
        (DecodeTiles(head_dim=32, group=16, tokens=16, num_warps=4), "too small for head_dim 64"),
    ],
)
def test_decode_rejects_invalid_tiles(paged_batch, tiles, message):
    batch = paged_batch([4], [1], 2, 2, 64, 16, torch.float32, seed=0)
    with pytest.raises(KernelInputError, match=message):
        batch.decode(tiles=tiles)


@pytest.mark.parametrize("query_group_size", [1, 2, 4, 8])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_default_tiles_are_valid_mma_shapes(query_group_size, head_dim):
    """GPU-only constraints the interpreter would not catch: powers of two, >= 16."""
    decode = decode_tiles(head_dim, query_group_size)
    prefill = prefill_tiles(head_dim, query_group_size)
    for size in (decode.head_dim, decode.group, decode.tokens, prefill.rows, prefill.tokens):
        assert size >= 16 and size & (size - 1) == 0
    assert decode.group >= query_group_size and prefill.group >= query_group_size
    assert decode.head_dim >= head_dim and prefill.head_dim >= head_dim
    assert isinstance(prefill, PrefillTiles)
