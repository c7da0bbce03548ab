"""Pure-torch references for the paged-attention kernels; also the engine's CPU path.

Layouts (per layer):
  k_cache, v_cache: (num_blocks, block_size, num_kv_heads, head_dim)
  query:            (num_tokens, num_heads, head_dim), sequences concatenated
  query_start_loc:  (num_seqs + 1,) offsets of each sequence's new tokens in `query`
  context_lens:     (num_seqs,) tokens of each sequence in the cache, new ones included
  block_tables:     (num_seqs, max_blocks_per_seq) block ids, row i valid up to
                    ceil(context_lens[i] / block_size)
The new tokens of a sequence sit at the end of its context and attend causally: query
token j of a sequence with q new tokens sees cache positions 0 .. context_len - q + j.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

# Decodes attended per SDPA call: `python -m bench.decode_groups` (128 decodes, contexts
# 20-380 and 100-1000 tokens) put 4 and 8 within noise of each other and ahead of 16 and 32.
DECODE_GROUP_SIZE = 8


def store_kv(
    key: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # (num_tokens,) int64: block_id * block_size + offset
) -> None:
    """Write each token's K and V into its slot of the paged cache."""
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    flat_k = k_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_v = v_cache.view(num_blocks * block_size, num_kv_heads, head_dim)
    flat_k.index_copy_(0, slot_mapping, key)
    flat_v.index_copy_(0, slot_mapping, value)


def gather_kv(
    cache: torch.Tensor, block_tables: torch.Tensor, max_context_len: int
) -> torch.Tensor:
    """Contiguous copy of the first `max_context_len` cached tokens of each sequence.

    Returns (num_seqs, num_kv_heads, max_context_len, head_dim); positions past a
    sequence's own length hold whatever the blocks held and must be masked.
    """
    num_seqs = block_tables.shape[0]
    block_size = cache.shape[1]
    num_blocks_needed = -(-max_context_len // block_size)
    block_ids = block_tables[:, :num_blocks_needed].reshape(-1).long()
    # index_select copies whole contiguous blocks: much faster than advanced indexing.
    blocks = cache.index_select(0, block_ids)  # (num_seqs * blocks, block_size, kv_heads, dim)
    tokens = blocks.view(num_seqs, num_blocks_needed * block_size, *cache.shape[2:])
    return tokens[:, :max_context_len].transpose(1, 2)  # (num_seqs, kv_heads, tokens, dim)


def paged_decode_attention(
    query: torch.Tensor,  # (num_seqs, num_heads, head_dim): one new token per sequence
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    max_context_len: int,
    scale: float,
) -> torch.Tensor:
    """Attention of one query token per sequence over its whole cached context."""
    keys = gather_kv(k_cache, block_tables, max_context_len)
    values = gather_kv(v_cache, block_tables, max_context_len)
    positions = torch.arange(max_context_len, device=query.device)
    # (num_seqs, 1, 1, max_context_len): True where the key exists
    mask = (positions[None, :] < context_lens[:, None].to(positions.dtype))[:, None, None, :]
    out = F.scaled_dot_product_attention(
        query.unsqueeze(2),
        keys,
        values,
        attn_mask=mask,
        scale=scale,
        enable_gqa=query.shape[1] != keys.shape[1],
    )
    return out.squeeze(2)  # (num_seqs, num_heads, head_dim)


def paged_prefill_attention(
    query: torch.Tensor,  # (query_len, num_heads, head_dim): one sequence's new tokens
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,  # (max_blocks_per_seq,)
    context_len: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention of one sequence's new tokens over its cached prefix and themselves."""
    query_len = query.shape[0]
    keys = gather_kv(k_cache, block_table[None], context_len)[0]  # (kv_heads, ctx, head_dim)
    values = gather_kv(v_cache, block_table[None], context_len)[0]
    q = query.transpose(0, 1)  # (num_heads, query_len, head_dim)
    gqa = q.shape[0] != keys.shape[0]
    if query_len == context_len:
        out = F.scaled_dot_product_attention(
            q, keys, values, is_causal=True, scale=scale, enable_gqa=gqa
        )
    else:
        query_positions = torch.arange(context_len - query_len, context_len, device=q.device)
        key_positions = torch.arange(context_len, device=q.device)
        mask = key_positions[None, :] <= query_positions[:, None]  # (query_len, context_len)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=scale, enable_gqa=gqa
        )
    return out.transpose(0, 1)  # (query_len, num_heads, head_dim)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: list[int],
    context_lens: list[int],
    num_decode_seqs: int,
    scale: float,
    context_lens_tensor: torch.Tensor | None = None,
) -> torch.Tensor:
    """A mixed batch: the first `num_decode_seqs` sequences have one new token each and run
    as batched decodes; the rest are prefill chunks run one by one.

    Decodes run in groups of `DECODE_GROUP_SIZE`, each padded only to its own longest
    context: when the engine orders decodes by context length (it does), little padding
    is gathered and attended over.
    """
    out = torch.empty_like(query)
    if num_decode_seqs:
        if context_lens_tensor is None:
            context_lens_tensor = torch.tensor(context_lens, device=query.device)
        for start in range(0, num_decode_seqs, DECODE_GROUP_SIZE):
            end = min(start + DECODE_GROUP_SIZE, num_decode_seqs)
            out[start:end] = paged_decode_attention(
                query[start:end],
                k_cache,
                v_cache,
                block_tables[start:end],
                context_lens_tensor[start:end],
                max(context_lens[start:end]),
                scale,
            )
    for seq_index in range(num_decode_seqs, len(context_lens)):
        start, end = query_start_loc[seq_index], query_start_loc[seq_index + 1]
        out[start:end] = paged_prefill_attention(
            query[start:end],
            k_cache,
            v_cache,
            block_tables[seq_index],
            context_lens[seq_index],
            scale,
        )
    return out


class PagedBatchInputs(Protocol):
    """The fields of the engine's AttentionMetadata that `paged_attention_for` reads."""

    block_tables: torch.Tensor
    context_lens: torch.Tensor
    num_decode_seqs: int
    context_lens_host: list[int]
    query_start_loc_host: list[int]


def paged_attention_for(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    metadata: PagedBatchInputs,
    scale: float,
) -> torch.Tensor:
    """`paged_attention` over a batch described by the engine's attention metadata: what the
    `torch` backend runs, and the `cpu` backend on inputs its kernel does not take."""
    return paged_attention(
        query,
        k_cache,
        v_cache,
        metadata.block_tables,
        metadata.query_start_loc_host,
        metadata.context_lens_host,
        metadata.num_decode_seqs,
        scale,
        context_lens_tensor=metadata.context_lens,
    )
