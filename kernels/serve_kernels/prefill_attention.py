"""Paged prefill/extend attention over a varlen batch of new query tokens.

Reference: `kernels.reference.paged_prefill_attention` (one sequence at a time).

Each sequence's new tokens sit at the end of its context (a prefix-cache hit or an earlier
prefill chunk may already be cached) and attend causally: new token j of a sequence with
q new tokens sees positions 0 .. context_len - q + j. Grid (num_seqs, query tiles,
num_kv_heads); a tile is `query_tokens` new tokens times the query heads that share the KV
head, packed into rows. Programs past a sequence's last new token exit at once. Because a
decode is a one-token chunk, the same kernel serves a mixed batch in one launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from serve_kernels.attention_tile import attend_kv_tile
from serve_kernels.tiling import PrefillTiles, check_tiles, dot_precision, prefill_tiles
from serve_kernels.validation import (
    check_index,
    check_out,
    check_paged_cache,
    check_runnable,
    check_tokens,
    require,
)


@triton.jit
def _prefill_kernel(
    out_ptr,  # (num_tokens, num_heads, head_dim)
    query_ptr,  # (num_tokens, num_heads, head_dim)
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    query_start_loc_ptr,  # (num_seqs + 1,) offsets into query/out
    context_lens_ptr,
    scale_log2,  # softmax scale * log2(e)
    head_dim,
    query_group_size,
    stride_query_token,
    stride_query_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    stride_table_seq,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_HEAD_DIM: tl.constexpr,
    BLOCK_GROUP: tl.constexpr,
    BLOCK_QUERY: tl.constexpr,  # new tokens per tile
    BLOCK_TOKENS: tl.constexpr,  # KV tokens per loop iteration
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    query_tile = tl.program_id(1)
    kv_head = tl.program_id(2)
    query_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - query_start
    if query_tile * BLOCK_QUERY >= query_len:
        return
    context_len = tl.load(context_lens_ptr + seq)
    prefix_len = context_len - query_len

    rows = tl.arange(0, BLOCK_QUERY * BLOCK_GROUP)
    token_in_chunk = query_tile * BLOCK_QUERY + rows // BLOCK_GROUP
    group = rows % BLOCK_GROUP
    heads = kv_head * query_group_size + group
    dims = tl.arange(0, BLOCK_HEAD_DIM)
    dim_mask = dims < head_dim
    row_valid = (token_in_chunk < query_len) & (group < query_group_size)
    row_mask = row_valid[:, None] & dim_mask[None, :]
    query_rows = (query_start + token_in_chunk).to(tl.int64)
    query = tl.load(
        query_ptr
        + query_rows[:, None] * stride_query_token
        + heads[:, None] * stride_query_head
        + dims[None, :],
        mask=row_mask,
        other=0.0,
    )  # (rows, head_dim)
    query_positions = prefix_len + token_in_chunk  # (rows,) position in the sequence

    row_max = tl.full([BLOCK_QUERY * BLOCK_GROUP], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_QUERY * BLOCK_GROUP], tl.float32)
    acc = tl.zeros([BLOCK_QUERY * BLOCK_GROUP, BLOCK_HEAD_DIM], tl.float32)
    # Keys past the tile's last new token are masked for every row: skip them.
    kv_end = tl.minimum(context_len, prefix_len + (query_tile + 1) * BLOCK_QUERY)
    table_row = block_tables_ptr + seq.to(tl.int64) * stride_table_seq
    for tile_start in range(0, kv_end, BLOCK_TOKENS):
        tokens = tile_start + tl.arange(0, BLOCK_TOKENS)
        token_mask = tokens < kv_end
        # Causal: position 0 is visible to every row, so each row sees a key in tile one.
        visible = token_mask[None, :] & (tokens[None, :] <= query_positions[:, None])
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
            visible,
            dims,
            dim_mask,
            scale_log2,
            stride_cache_block,
            stride_cache_slot,
            stride_cache_head,
            BLOCK_SIZE=BLOCK_SIZE,
            DOT_PRECISION=DOT_PRECISION,
        )

    out = acc / row_sum[:, None]
    tl.store(
        out_ptr
        + query_rows[:, None] * stride_out_token
        + heads[:, None] * stride_out_head
        + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask,
    )


def paged_prefill_attention(
    query: torch.Tensor,  # (num_tokens, num_heads, head_dim): sequences' new tokens, concatenated
    k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # (num_seqs, max_blocks_per_seq)
    query_start_loc: torch.Tensor,  # (num_seqs + 1,) offsets of each sequence's tokens in query
    context_lens: torch.Tensor,  # (num_seqs,) cached + new tokens
    max_query_len: int,
    scale: float,
    *,
    tiles: PrefillTiles | None = None,  # None: picked from head_dim and the GQA ratio
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached prefix and themselves.

    `query_start_loc` holds absolute offsets into `query` and `out`, so a slice of a larger
    batch's metadata (say, the prefill part after the decodes) works unchanged.
    """
    _, block_size, num_kv_heads, head_dim = check_paged_cache(k_cache, v_cache)
    check_tokens(query, "query", None, head_dim, k_cache)
    num_heads = query.shape[1]
    require(
        num_heads % num_kv_heads == 0,
        f"query heads ({num_heads}) must be a multiple of the cache's kv heads ({num_kv_heads})",
    )
    num_seqs = context_lens.shape[0] if context_lens.dim() == 1 else -1
    check_index(context_lens, "context_lens", (num_seqs,), k_cache)
    check_index(block_tables, "block_tables", (num_seqs, -1), k_cache)
    check_index(query_start_loc, "query_start_loc", (num_seqs + 1,), k_cache)
    require(max_query_len >= 0, f"max_query_len must be >= 0, got {max_query_len}")
    out = check_out(out, tuple(query.shape), query)
    if num_seqs == 0 or max_query_len == 0:
        return out
    check_runnable(k_cache, "k_cache", interpreted=INTERPRETED)

    query_group_size = num_heads // num_kv_heads
    tiles = tiles or prefill_tiles(head_dim, query_group_size)
    check_tiles(tiles, head_dim, query_group_size)
    grid = (num_seqs, triton.cdiv(max_query_len, tiles.query_tokens), num_kv_heads)
    _prefill_kernel[grid](
        out,
        query,
        k_cache,
        v_cache,
        block_tables,
        query_start_loc,
        context_lens,
        scale * math.log2(math.e),
        head_dim,
        query_group_size,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        BLOCK_SIZE=block_size,
        BLOCK_HEAD_DIM=tiles.head_dim,
        BLOCK_GROUP=tiles.group,
        BLOCK_QUERY=tiles.query_tokens,
        BLOCK_TOKENS=tiles.tokens,
        DOT_PRECISION=dot_precision(query.dtype),
        num_warps=tiles.num_warps,
    )
    return out


INTERPRETED = not isinstance(_prefill_kernel, triton.runtime.JITFunction)
