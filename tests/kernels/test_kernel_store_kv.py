"""kernels.store_kv against reference.store_kv on NaN-poisoned caches and shuffled slots."""

from __future__ import annotations

import pytest
import torch

from serve_kernels import reference
from serve_kernels.store_kv import store_kv
from serve_kernels.validation import KernelInputError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("num_tokens", "num_kv_heads", "head_dim", "block_size"),
    [(1, 1, 64, 16), (21, 2, 64, 8), (37, 4, 128, 16)],
)
def test_store_kv_matches_reference(device, dtype, num_tokens, num_kv_heads, head_dim, block_size):
    generator = torch.Generator().manual_seed(num_tokens)
    num_blocks = 6
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_cache = k_cache.clone()
    # Slices of a fused projection, as in the model: strided, last dim contiguous.
    fused = torch.randn(num_tokens, 3, num_kv_heads, head_dim, generator=generator)
    fused = fused.to(device, dtype)
    key, value = fused[:, 1], fused[:, 2]
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens].to(device)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    reference.store_kv(key, value, expected_k, expected_v, slots)

    store_kv(key, value, k_cache, v_cache, slots)

    # Bit-exact copies, and every slot not in the mapping still holds its NaN.
    torch.testing.assert_close(k_cache, expected_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, expected_v, rtol=0, atol=0, equal_nan=True)
    assert k_cache.isnan().sum().item() == (num_blocks * block_size - num_tokens) * (
        num_kv_heads * head_dim
    )


def test_store_kv_rejects_wrong_head_count(device):
    cache = torch.zeros(2, 8, 2, 64, device=device)
    key = torch.zeros(3, 4, 64, device=device)
    with pytest.raises(KernelInputError, match="key must have 2 heads, got 4"):
        store_kv(key, key, cache, cache.clone(), torch.arange(3, device=device))


def test_store_kv_rejects_dtype_mismatch(device):
    cache = torch.zeros(2, 8, 2, 64, device=device)
    key = torch.zeros(3, 2, 64, dtype=torch.float16, device=device)
    with pytest.raises(KernelInputError, match=r"key dtype must equal the cache's \(torch.float32"):
        store_kv(key, key, cache, cache.clone(), torch.arange(3, device=device))
