"""oneDNN-packed float32 projections (layers/packed_linear.py): the same products as
F.linear, the same greedy tokens as the plain path, plain weights released except where
another layer shares them (a tied LM head), and the start-up warm-up of their kernels."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from serve_app.engine import fast_paths
from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.fast_paths import warm_up_packed_projections
from serve_app.engine.layers.linear import PackableProjection
from serve_app.engine.layers.packed_linear import (
    onednn_packing_available,
    pack_weight,
    packed_linear,
)
from serve_app.engine.sampling_params import SamplingParams
from tests.engine.checkpoints import build_checkpoint


def test_packing_is_available_on_this_machine():
    """The engine's CPU speed rests on it: a torch without oneDNN must fail here, not
    silently run at half the rate."""
    assert onednn_packing_available()


def test_packed_products_match_float64():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(96, 48, generator=generator)
    bias = torch.randn(96, generator=generator)
    packed = pack_weight(weight)
    for tokens in (1, 7, 300):
        x = torch.randn(tokens, 48, generator=generator)
        got = packed_linear(x, packed, bias)
        expected = F.linear(x.double(), weight.double(), bias.double())
        assert got.shape == (tokens, 96) and got.is_contiguous()
        assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-6


def run(packed: bool, model: str = "tiny") -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(
        EngineConfig(
            model=model,
            dtype="float32",
            kv_cache_memory_bytes=8 << 20,
            max_model_len=128,
            max_num_batched_tokens=64,
            cpu_packed_weights=packed,
        )
    )
    prompts = [[5, 6, 7], list(range(10, 90)), [200] * 20]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    return engine.generate(prompts, params), engine


def test_packed_and_plain_paths_generate_the_same_tokens():
    plain, plain_engine = run(packed=False)
    packed, packed_engine = run(packed=True)
    assert not plain_engine.executor.runner.fast_paths.packed_weights
    assert packed_engine.executor.runner.fast_paths.packed_weights
    assert packed == plain


@pytest.mark.parametrize("tied", [False, True])
def test_plain_weights_are_released_unless_shared(tied, tmp_path):
    model_dir = (
        build_checkpoint("llama-tied-bias-linearrope-headdim32", tmp_path) if tied else "tiny"
    )
    _, engine = run(packed=True, model=str(model_dir))
    model = engine.executor.runner.model
    projections = [m for m in model.modules() if isinstance(m, PackableProjection)]
    assert projections and all(m.packed_weight is not None for m in projections)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    for module in projections:
        if module is model.lm_head and tied:
            assert module.weight.numel() > 0, "the embedding still reads the tied weight"
        else:
            assert module.weight.numel() == 0, f"{type(module).__name__} kept its plain copy"


class RecordingProjection(PackableProjection):
    def __init__(self, out_features: int, in_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.randn(out_features), requires_grad=False) if bias else None
        self.calls: list[tuple[int, bool]] = []

    def project(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.shape[0], bias is not None))
        return super().project(x, bias)


def test_warm_up_runs_each_packed_shape_once_per_token_count():
    first, same_shape, with_bias, other, unpacked = (
        RecordingProjection(8, 4, bias=False),
        RecordingProjection(8, 4, bias=False),
        RecordingProjection(8, 4, bias=True),
        RecordingProjection(6, 4, bias=False),
        RecordingProjection(6, 4, bias=False),
    )
    for module in (first, same_shape, with_bias, other):
        module.pack_weight(release=True)
    modules = [first, same_shape, with_bias, other, unpacked]
    assert warm_up_packed_projections(modules, [1, 3]) == 2
    assert first.calls == [(1, False), (3, False)]
    assert same_shape.calls == [], "a shape already warmed shares its kernels"
    assert with_bias.calls == [(1, True), (3, True)], "a bias is another kernel"
    assert other.calls == [(1, False), (3, False)]
    assert unpacked.calls == [], "plain weights have no kernels to build"


def test_warm_up_stops_at_its_flop_budget():
    """Token counts in the order given, every shape at each, and no product past the budget:
    here the three shapes at 1 token (2 x 1 x (32 + 32 + 24) = 176 FLOPs) fit, and the first
    product at 3 tokens (192 more) does not."""
    first, with_bias, other = (
        RecordingProjection(8, 4, bias=False),
        RecordingProjection(8, 4, bias=True),
        RecordingProjection(6, 4, bias=False),
    )
    for module in (first, with_bias, other):
        module.pack_weight(release=True)
    assert warm_up_packed_projections([first, with_bias, other], [1, 3], max_flops=300) == 1
    assert first.calls == [(1, False)]
    assert with_bias.calls == [(1, True)]
    assert other.calls == [(1, False)]


@pytest.mark.parametrize("warmup", [True, False])
def test_engine_warms_up_its_gemms_at_start(warmup, caplog):
    """Every decode batch size for every projection shape (the LM head included), plus a full
    token budget for the layers' shapes."""
    caplog.set_level(logging.INFO, logger="serve_app.engine.fast_paths")
    LLMEngine(
        EngineConfig(
            model="tiny",
            kv_cache_memory_bytes=8 << 20,
            max_num_seqs=5,
            max_num_batched_tokens=64,
            cpu_gemm_warmup=warmup,
        )
    )
    built = [r.getMessage() for r in caplog.records if "packed GEMM kernels" in r.getMessage()]
    if warmup:
        assert len(built) == 1
        assert re.fullmatch(
            r"packed GEMM kernels built for batch sizes 1-5 and 64 in [\d.]+ s", built[0]
        )
    else:
        assert built == []


def test_engine_warm_up_within_its_budget_says_where_it_stopped(caplog, monkeypatch):
    """A budget for batch sizes 1 and 2 (3 tokens' worth of every shape): the log names the
    sizes built and that the larger ones build on first use; the full token budget (64
    tokens of the layers) does not fit either."""
    config = EngineConfig(
        model="tiny", kv_cache_memory_bytes=8 << 20, max_num_seqs=5, max_num_batched_tokens=64
    )
    plain = LLMEngine(dataclasses.replace(config, cpu_gemm_warmup=False))
    flops_per_token = sum(
        2.0 * module.packed_weight.shape[0] * module.packed_weight.shape[1]
        for module in {
            (*m.packed_weight.shape, getattr(m, "bias", None) is not None): m
            for m in plain.executor.runner.model.modules()
            if isinstance(m, PackableProjection)
        }.values()
    )
    monkeypatch.setattr(fast_paths, "GEMM_WARMUP_MAX_FLOPS", 3.5 * flops_per_token)
    caplog.set_level(logging.INFO, logger="serve_app.engine.fast_paths")
    LLMEngine(config)
    built = [r.getMessage() for r in caplog.records if "packed GEMM kernels" in r.getMessage()]
    assert len(built) == 1
    assert re.fullmatch(
        r"packed GEMM kernels built for batch sizes 1-2 in [\d.]+ s; up to 5 they build on "
        r"first use \(over the warm-up's FLOP budget\)",
        built[0],
    )
