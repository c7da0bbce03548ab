"""KV store: write this step's new K and V into their slots of the paged cache.

Reference: `kernels.reference.store_kv`. One program copies a tile of tokens; a token's
slot is `block_id * block_size + offset` (the engine's slot_mapping).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from serve_kernels.validation import (
    check_index,
    check_paged_cache,
    check_runnable,
    check_tokens,
    require,
)


@triton.jit
def _store_kv_kernel(
    key_ptr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    num_tokens,
    head_dim,
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_block,
    stride_cache_slot,
    stride_cache_head,
    BLOCK_SIZE: tl.constexpr,  # tokens per cache block
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_HEAD_DIM: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    dims = tl.arange(0, BLOCK_HEAD_DIM)
    token_mask = tokens < num_tokens
    mask = token_mask[:, None] & (dims < head_dim)[None, :]
    slots = tl.load(slot_mapping_ptr + tokens, mask=token_mask, other=0).to(tl.int64)
    # (tokens,) offset of each token's slot in the cache
    cache_rows = (slots // BLOCK_SIZE) * stride_cache_block + (
        slots % BLOCK_SIZE
    ) * stride_cache_slot
    rows = tokens.to(tl.int64)
    for head in tl.static_range(NUM_KV_HEADS):
        key = tl.load(
            key_ptr + rows[:, None] * stride_key_token + head * stride_key_head + dims[None, :],
            mask=mask,
        )
        value = tl.load(
            value_ptr
            + rows[:, None] * stride_value_token
            + head * stride_value_head
            + dims[None, :],
            mask=mask,
        )
        cache_offsets = cache_rows[:, None] + head * stride_cache_head + dims[None, :]
        tl.store(k_cache_ptr + cache_offsets, key, mask=mask)
        tl.store(v_cache_ptr + cache_offsets, value, mask=mask)


def store_kv(
    key: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    value: torch.Tensor,
    k_cache: torch.Tensor,  # (num_blocks, block_size, num_kv_heads, head_dim)
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (num_tokens,) block_id * block_size + offset
) -> None:
    """Write each token's K and V into its slot of the paged cache (in place)."""
    _, block_size, num_kv_heads, head_dim = check_paged_cache(k_cache, v_cache)
    check_tokens(key, "key", num_kv_heads, head_dim, k_cache)
    check_tokens(value, "value", num_kv_heads, head_dim, k_cache)
    num_tokens = key.shape[0]
    check_index(slot_mapping, "slot_mapping", (num_tokens,), k_cache)
    require(
        value.shape[0] == num_tokens,
        f"value must have key's {num_tokens} tokens, got {value.shape[0]}",
    )
    if num_tokens == 0:
        return
    check_runnable(k_cache, "k_cache", interpreted=INTERPRETED)
    block_tokens = 16
    grid = (triton.cdiv(num_tokens, block_tokens),)
    _store_kv_kernel[grid](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        num_tokens,
        head_dim,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        BLOCK_SIZE=block_size,
        BLOCK_TOKENS=block_tokens,
        BLOCK_HEAD_DIM=triton.next_power_of_2(head_dim),
        NUM_KV_HEADS=num_kv_heads,
    )


INTERPRETED = not isinstance(_store_kv_kernel, triton.runtime.JITFunction)
