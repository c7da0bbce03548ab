"""The torch references (the kernels' oracles and the CPU path) against plain dense causal
attention on contiguous tensors, in float64."""

from __future__ import annotations

import pytest
import torch

from serve_kernels import reference


def contiguous_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """(length, kv_heads, head_dim): token by token through the block table, independent of
    reference.gather_kv."""
    block_size = cache.shape[1]
    rows = [cache[int(block_table[pos // block_size]), pos % block_size] for pos in range(length)]
    return torch.stack(rows)


def dense_causal_attention(
    query: torch.Tensor,  # (query_len, heads, head_dim): the last query_len positions
    keys: torch.Tensor,  # (context_len, kv_heads, head_dim)
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    query_len, num_heads, _ = query.shape
    context_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    keys = keys.double().repeat_interleave(group, dim=1)
    values = values.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", query.double(), keys) * scale
    query_positions = torch.arange(context_len - query_len, context_len)
    visible = torch.arange(context_len)[None, :] <= query_positions[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), values)


def dense_batch(batch) -> torch.Tensor:
    outputs = []
    for seq, context_len in enumerate(batch.context_lens_host):
        start, end = batch.query_start_loc_host[seq], batch.query_start_loc_host[seq + 1]
        keys = contiguous_kv(batch.k_cache, batch.block_tables[seq], context_len)
        values = contiguous_kv(batch.v_cache, batch.block_tables[seq], context_len)
        outputs.append(dense_causal_attention(batch.query[start:end], keys, values, batch.scale))
    return torch.cat(outputs)


@pytest.mark.parametrize("query_group_size", [1, 4])
def test_reference_decode_equals_dense_attention(paged_batch, query_group_size):
    context_lens = [1, 9, 16, 29]
    batch = paged_batch(context_lens, [1] * 4, 2, query_group_size, 32, 8, torch.float64, seed=1)
    out = reference.paged_decode_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.context_lens,
        max(context_lens),
        batch.scale,
    )
    torch.testing.assert_close(out, dense_batch(batch), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("query_group_size", [1, 2])
def test_reference_mixed_batch_equals_dense_attention(paged_batch, query_group_size):
    # Two decodes, a full prefill, a chunk after a cached prefix, a one-token chunk.
    context_lens = [5, 17, 11, 30, 8]
    query_lens = [1, 1, 11, 13, 1]
    batch = paged_batch(context_lens, query_lens, 2, query_group_size, 32, 8, torch.float64, 2)
    out = reference.paged_attention(
        batch.query,
        batch.k_cache,
        batch.v_cache,
        batch.block_tables,
        batch.query_start_loc_host,
        batch.context_lens_host,
        2,
        batch.scale,
    )
    torch.testing.assert_close(out, dense_batch(batch), rtol=1e-10, atol=1e-10)


def test_reference_store_kv_writes_each_slot(device):
    k_cache = torch.full((4, 8, 2, 16), float("nan"), device=device)
    v_cache = k_cache.clone()
    key, value = torch.randn(2, 5, 2, 16, device=device)
    slots = [3, 8, 31, 12, 0]
    reference.store_kv(key, value, k_cache, v_cache, torch.tensor(slots, device=device))
    for token, slot in enumerate(slots):
        assert torch.equal(k_cache[slot // 8, slot % 8], key[token])
        assert torch.equal(v_cache[slot // 8, slot % 8], value[token])
    assert k_cache.isnan().sum().item() == (32 - 5) * 2 * 16
