"""The inner step shared by the decode and prefill kernels: gather one tile of cached tokens
through the block table and fold it into a running (online) softmax.

The softmax runs in base 2 (`scale_log2` = scale * log2(e)) with float32 statistics:
`row_max` is the running max of each row's scores, `row_sum` the sum of exp2(score - max),
and `acc` the probability-weighted sum of values, rescaled whenever the max grows.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def attend_kv_tile(
    query,  # (rows, head_dim) in the cache dtype
    acc,  # (rows, head_dim) float32
    row_max,  # (rows,) float32
    row_sum,  # (rows,) float32
    k_cache_ptr,
    v_cache_ptr,
    table_row,  # pointer to this sequence's block-table row
    kv_head,
    tokens,  # (tokens,) positions in the sequence
    token_mask,  # (tokens,) position exists and belongs to this program
    visible,  # (rows or 1, tokens) which keys each row may see
    dims,  # (head_dim,)
    dim_mask,
    scale_log2,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    DOT_PRECISION: tl.constexpr,
):
    """Caller's contract: every row sees at least one key of its first tile, so the running
    max is finite from then on and exp2(row_max - new_max) never meets inf - inf."""
    block_ids = tl.load(table_row + tokens // BLOCK_SIZE, mask=token_mask, other=0)
    slots = (
        block_ids.to(tl.int64) * stride_cache_block
        + (tokens % BLOCK_SIZE) * stride_cache_slot
        + kv_head * stride_cache_head
    )
    kv_mask = token_mask[:, None] & dim_mask[None, :]
    key = tl.load(k_cache_ptr + slots[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    scores = tl.dot(query, tl.trans(key), input_precision=DOT_PRECISION) * scale_log2
    scores = tl.where(visible, scores, float("-inf"))  # (rows, tokens)
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    correction = tl.exp2(row_max - new_max)
    probs = tl.exp2(scores - new_max[:, None])
    row_sum = row_sum * correction + tl.sum(probs, 1)
    value = tl.load(v_cache_ptr + slots[:, None] + dims[None, :], mask=kv_mask, other=0.0)
    acc = acc * correction[:, None] + tl.dot(
        probs.to(value.dtype), value, input_precision=DOT_PRECISION
    )
    return acc, new_max, row_sum
