"""The native CPU elementwise kernels (kernels/cpu_elementwise.py) against the torch ops they
replace: the residual add fused with RMSNorm (in place into the residual) and SiLU-and-mul,
on widths with and without a vector tail, large magnitudes, several thread counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.cpu_elementwise import CpuElementwise, load_cpu_elementwise

TOLERANCE = 1e-6  # ‖out − ref‖ / ‖ref‖, float32


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> CpuElementwise:
    return load_cpu_elementwise(tmp_path_factory.mktemp("native-kernels"))


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
    generator = torch.Generator().manual_seed(threads)
    gate_up = torch.randn(50, 96, generator=generator)
    x, residual = torch.randn(50, 48, generator=generator), torch.randn(50, 48)
    weight = torch.randn(48, generator=generator)
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        activated = kernels.silu_and_mul(gate_up)
        normalized = kernels.add_rms_norm(x, residual.clone(), weight, 1e-5)
    finally:
        torch.set_num_threads(saved)
    gate, up = gate_up.chunk(2, dim=-1)
    assert relative_error(activated, F.silu(gate) * up) < TOLERANCE
    assert relative_error(normalized, F.rms_norm(residual + x, (48,), weight, 1e-5)) < TOLERANCE


def test_supports_only_contiguous_float32_cpu(kernels):
    rows = torch.randn(4, 8)
    assert kernels.supports(rows)
    assert not kernels.supports(rows.t())
    assert not kernels.supports(rows.half())
