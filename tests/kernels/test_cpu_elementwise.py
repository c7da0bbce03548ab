"""The native CPU elementwise kernels (serve_kernels/cpu_elementwise.py) against the torch ops they
replace: the residual add fused with RMSNorm (in place into the residual) and SiLU-and-mul,
on widths with and without a vector tail, large magnitudes, several thread counts; each on
the AVX-512 build and on the portable one (`native_build_flags`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from serve_kernels.cpu_elementwise import CpuElementwise
from serve_kernels.native_build import PARALLEL_GRAIN

TOLERANCE = 1e-6  # ‖out − ref‖ / ‖ref‖, float32


@pytest.fixture(scope="module")
def kernels(tmp_path_factory, native_build_flags) -> CpuElementwise:
    return CpuElementwise(tmp_path_factory.mktemp("native-kernels"), native_build_flags)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize(("tokens", "hidden"), [(1, 64), (7, 512), (300, 40), (33, 1000)])
@pytest.mark.parametrize("with_residual", [True, False])
def test_add_rms_norm_matches_torch(kernels, tokens, hidden, with_residual):
    generator = torch.Generator().manual_seed(tokens * hidden)
    x = torch.randn(tokens, hidden, generator=generator) * 3
    residual = torch.randn(tokens, hidden, generator=generator)
    weight = torch.randn(hidden, generator=generator)
    expected_residual = residual + x if with_residual else residual.clone()
    expected = F.rms_norm(expected_residual, (hidden,), weight, 1e-6)

    out = kernels.add_rms_norm(x if with_residual else None, residual, weight, 1e-6)

    assert relative_error(out, expected) < TOLERANCE
    assert torch.equal(residual, expected_residual), "the residual holds residual + x"


@pytest.mark.parametrize(("tokens", "inter"), [(1, 16), (5, 1536), (64, 40), (3, 7)])
def test_silu_and_mul_matches_torch(kernels, tokens, inter):
    generator = torch.Generator().manual_seed(tokens + inter)
    gate_up = torch.randn(tokens, 2 * inter, generator=generator) * 30  # saturating sigmoids
    gate, up = gate_up.chunk(2, dim=-1)
    expected = F.silu(gate) * up

    out = kernels.silu_and_mul(gate_up)

    assert out.shape == (tokens, inter) and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert relative_error(out, expected) < TOLERANCE


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(kernels, threads):
    """Inputs above native_build.PARALLEL_GRAIN, so the rows really spread over threads."""
    generator = torch.Generator().manual_seed(threads)
    tokens, hidden = 400, 96
    assert tokens * hidden >= PARALLEL_GRAIN
    gate_up = torch.randn(tokens, 2 * hidden, generator=generator)
    x = torch.randn(tokens, hidden, generator=generator)
    residual = torch.randn(tokens, hidden, generator=generator)
    weight = torch.randn(hidden, generator=generator)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        activated = kernels.silu_and_mul(gate_up)
        normalized = kernels.add_rms_norm(x, residual.clone(), weight, 1e-5)
    finally:
        torch.set_num_threads(saved)
    gate, up = gate_up.chunk(2, dim=-1)
    assert relative_error(activated, F.silu(gate) * up) < TOLERANCE
    expected = F.rms_norm(residual + x, (hidden,), weight, 1e-5)
    assert relative_error(normalized, expected) < TOLERANCE


def test_supports_only_contiguous_float32_cpu(kernels):
    rows = torch.randn(4, 8)
    assert kernels.supports(rows)
    assert not kernels.supports(rows.t())
    assert not kernels.supports(rows.half())


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(8, 4, 64), (4, 4, 40)])
def test_rotary_store_kv_matches_torch(kernels, num_heads, num_kv_heads, head_dim):
    """Queries rotated exactly as RotaryEmbedding.rotate (the same float operations), keys
    rotated and values copied into their (shuffled) cache slots; other slots untouched."""
    from serve_app.engine.layers.rotary import RotaryEmbedding
    from serve_kernels import reference

    generator = torch.Generator().manual_seed(head_dim)
    tokens, block_size, num_blocks = 37, 16, 6
    width = (num_heads + 2 * num_kv_heads) * head_dim
    fused = torch.randn(tokens, width + 8, generator=generator)  # rows wider than qkv
    qkv = fused[:, :width]
    positions = torch.randint(0, 200, (tokens,), generator=generator)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:tokens]
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=generator), torch.randn(shape)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    rotary = RotaryEmbedding(head_dim, 256, 10000.0, None)

    query = kernels.rotary_store_kv(
        qkv, positions, rotary.cos_sin, k_cache, v_cache, slots, num_heads
    )

    q, k, v = qkv.split([num_heads * head_dim, *[num_kv_heads * head_dim] * 2], dim=-1)
    expected_q = rotary.rotate(positions, q.reshape(tokens, num_heads, head_dim))
    rotated_k = rotary.rotate(positions, k.reshape(tokens, num_kv_heads, head_dim))
    reference.store_kv(
        rotated_k, v.reshape(tokens, num_kv_heads, head_dim), expected_k, expected_v, slots
    )
    assert torch.equal(query, expected_q), "bit-for-bit the torch rotation"
    assert torch.equal(k_cache, expected_k)
    assert torch.equal(v_cache, expected_v)


def test_argmax_rows_matches_torch(kernels):
    """First maximum on ties, first NaN where there is one, rows narrower than a vector."""
    generator = torch.Generator().manual_seed(11)
    scores = torch.randn(9, 1000, generator=generator)
    scores[1, 500] = scores[1, 20] = 50.0  # a tie: the first wins
    scores[2, 700] = float("nan")
    scores[3, :] = float("-inf")
    scores[4, 999] = 99.0  # the last element, in the scalar tail
    scores[5, 3] = float("nan")
    scores[5, 900] = float("nan")
    scores[6, 0] = 1e9
    assert torch.equal(kernels.argmax_rows(scores), scores.argmax(dim=-1))
    narrow = torch.randn(5, 7, generator=generator)
    assert torch.equal(kernels.argmax_rows(narrow), narrow.argmax(dim=-1))
