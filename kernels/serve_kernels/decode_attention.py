"""Paged decode attention: one query token per sequence over its block table.

Reference: `kernels.reference.paged_decode_attention`.

Grid (num_seqs, num_kv_heads, num_splits). A program owns the query heads that share one KV
head (packed into the rows of a tile, so each K/V tile is read once per group) and one
contiguous range of the sequence's cached tokens. With one split it writes the normalized
output directly; with several (flash-decoding: more programs for long contexts and small
batches) it writes each split's normalized partial output and its log-sum-exp, and a second
kernel combines the splits. The softmax is online, in base 2, with float32 statistics.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from serve_kernels.attention_tile import attend_kv_tile
from serve_kernels.tiling import (
    DecodeTiles,
    check_tiles,
    decode_num_splits,
    decode_tiles,
    dot_precision,
)
from serve_kernels.validation import (
    check_index,
    check_out,
    check_paged_cache,
    check_runnable,
    check_tokens,
    require,
)


@triton.jit
def _decode_split_kernel(
    out_ptr,  # (num_seqs, num_heads, head_dim) or partial (num_seqs, num_heads, splits, hd)
    lse_ptr,  # (num_seqs, num_heads, splits) float32, log2 domain; unused with one split
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    scale_log2,  # softmax scale * log2(e)
    head_dim,
    query_group_size,
    stride_query_seq,
    stride_query_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_table_seq,
    stride_out_seq,
    stride_out_head,
    stride_out_split,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_HEAD_DIM: tl.constexpr,
    BLOCK_GROUP: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    context_len = tl.load(context_lens_ptr + seq)
    # Per-sequence split length, a whole number of token tiles.
    split_len = tl.cdiv(tl.cdiv(context_len, NUM_SPLITS), BLOCK_TOKENS) * BLOCK_TOKENS
    start = split * split_len
    end = tl.minimum(start + split_len, context_len)

    group = tl.arange(0, BLOCK_GROUP)
    dims = tl.arange(0, BLOCK_HEAD_DIM)
    heads = kv_head * query_group_size + group
    dim_mask = dims < head_dim
    row_mask = (group < query_group_size)[:, None] & dim_mask[None, :]
    query = tl.load(
        query_ptr
        + seq.to(tl.int64) * stride_query_seq
        + heads[:, None] * stride_query_head
        + dims[None, :],
        mask=row_mask,
        other=0.0,
    )  # (group, head_dim)

    row_max = tl.full([BLOCK_GROUP], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_GROUP], tl.float32)
    acc = tl.zeros([BLOCK_GROUP, BLOCK_HEAD_DIM], tl.float32)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_table_seq
    for tile_start in range(start, end, BLOCK_TOKENS):
        tokens = tile_start + tl.arange(0, BLOCK_TOKENS)
        token_mask = tokens < end  # every tile holds at least one valid token
        acc, row_max, row_sum = attend_kv_tile(
            query,
            acc,
            row_max,
            row_sum,
            k_cache_ptr,
            v_cache_ptr,
            table_row,
            kv_head,
            tokens,
            token_mask,
            token_mask[None, :],
            dims,
            dim_mask,
            scale_log2,
            stride_cache_block,
            stride_cache_slot,
            stride_cache_head,
            BLOCK_SIZE=BLOCK_SIZE,
            DOT_PRECISION=DOT_PRECISION,
        )

    # An empty split (short sequence) has row_sum 0: output 0, log-sum-exp -inf.
    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    out_offsets = (
        seq.to(tl.int64) * stride_out_seq
        + heads[:, None] * stride_out_head
        + split * stride_out_split
        + dims[None, :]
    )
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=row_mask)
    if NUM_SPLITS > 1:
        has_tokens = row_sum > 0
        lse = tl.where(has_tokens, row_max + tl.log2(tl.where(has_tokens, row_sum, 1.0)), row_max)
        lse_offsets = (seq * tl.num_programs(1) * query_group_size + heads) * NUM_SPLITS + split
        tl.store(lse_ptr + lse_offsets, lse, mask=group < query_group_size)


@triton.jit
def _decode_combine_kernel(
    out_ptr,  # (num_seqs, num_heads, head_dim)
    partial_ptr,  # (num_seqs, num_heads, splits, head_dim) float32, contiguous
    lse_ptr,  # (num_seqs, num_heads, splits) float32, contiguous
    head_dim,
    stride_out_seq,
    stride_out_head,
    NUM_SPLITS: tl.constexpr,
    BLOCK_SPLITS: tl.constexpr,
    BLOCK_HEAD_DIM: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    row = seq.to(tl.int64) * tl.num_programs(1) + head
    splits = tl.arange(0, BLOCK_SPLITS)
    dims = tl.arange(0, BLOCK_HEAD_DIM)
    split_mask = splits < NUM_SPLITS
    lse = tl.load(lse_ptr + row * NUM_SPLITS + splits, mask=split_mask, other=float("-inf"))
    # Split 0 always holds tokens (context_len >= 1), so the max is finite.
    weights = tl.exp2(lse - tl.max(lse, 0))
    mask = split_mask[:, None] & (dims < head_dim)[None, :]
    partial = tl.load(
        partial_ptr + (row * NUM_SPLITS + splits[:, None]) * head_dim + dims[None, :],
        mask=mask,
        other=0.0,
    )  # (splits, head_dim)
    out = tl.sum(partial * weights[:, None], 0) / tl.sum(weights, 0)
    tl.store(
        out_ptr + seq.to(tl.int64) * stride_out_seq + head * stride_out_head + dims,
        out.to(out_ptr.dtype.element_ty),
        mask=dims < head_dim,
    )


def paged_decode_attention(
    query: torch.Tensor,  # (num_seqs, num_heads, head_dim): one new token per sequence
    k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (num_seqs, max_blocks_per_seq)
    context_lens: torch.Tensor,  # (num_seqs,) each >= 1, new token included
    max_context_len: int,
    scale: float,
    *,
    num_splits: int | None = None,  # None: picked from the batch and the device
    tiles: DecodeTiles | None = None,  # None: picked from head_dim and the GQA ratio
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query token per sequence over its whole cached context."""
    _, block_size, num_kv_heads, head_dim = check_paged_cache(k_cache, v_cache)
    check_tokens(query, "query", None, head_dim, k_cache)
    num_seqs, num_heads, _ = query.shape
    require(
        num_heads % num_kv_heads == 0,
        f"query heads ({num_heads}) must be a multiple of the cache's kv heads ({num_kv_heads})",
    )
    check_index(block_tables, "block_tables", (num_seqs, -1), k_cache)
    check_index(context_lens, "context_lens", (num_seqs,), k_cache)
    require(
        max_context_len <= block_tables.shape[1] * block_size,
        f"max_context_len ({max_context_len}) exceeds what block_tables can address "
        f"({block_tables.shape[1]} blocks x {block_size})",
    )
    out = check_out(out, tuple(query.shape), query)
    if num_seqs == 0:
        return out
    check_runnable(k_cache, "k_cache", interpreted=INTERPRETED)
    if num_splits is None:
        num_splits = decode_num_splits(num_seqs, num_kv_heads, max_context_len, k_cache.device)
    require(num_splits >= 1, f"num_splits must be >= 1, got {num_splits}")

    query_group_size = num_heads // num_kv_heads
    tiles = tiles or decode_tiles(head_dim, query_group_size)
    check_tiles(tiles, head_dim, query_group_size)
    if num_splits == 1:
        target, lse = out, out  # lse is never written with one split
    else:
        target = torch.empty(
            (num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device
        )
        lse = torch.empty(
            (num_seqs, num_heads, num_splits), dtype=torch.float32, device=query.device
        )
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        target,
        lse,
        query,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        scale * math.log2(math.e),
        head_dim,
        query_group_size,
        query.stride(0),
        query.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        target.stride(0),
        target.stride(1),
        target.stride(2) if num_splits > 1 else 0,
        BLOCK_SIZE=block_size,
        BLOCK_HEAD_DIM=tiles.head_dim,
        BLOCK_GROUP=tiles.group,
        BLOCK_TOKENS=tiles.tokens,
        NUM_SPLITS=num_splits,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=tiles.num_warps,
    )
    if num_splits > 1:
        _decode_combine_kernel[(num_seqs, num_heads)](
            out,
            target,
            lse,
            head_dim,
            out.stride(0),
            out.stride(1),
            NUM_SPLITS=num_splits,
            BLOCK_SPLITS=triton.next_power_of_2(num_splits),
            BLOCK_HEAD_DIM=triton.next_power_of_2(head_dim),
        )
    return out


INTERPRETED = not isinstance(_decode_split_kernel, triton.runtime.JITFunction)
