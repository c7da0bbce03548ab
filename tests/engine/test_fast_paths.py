"""The CPU fast paths (fast_paths.py) against the plain model: `cpu_fast_paths` on swaps the
native modules and packed weights in, off leaves the model as written, and both give the
same greedy tokens and logits (prefill chunks and decodes; a qk-norm model, whose attention
keeps the plain rotary path)."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.fast_paths import (
    NativeRMSNorm,
    NativeRotaryLlamaAttention,
    NativeSiluAndMul,
)
from serve_app.engine.layers.norm import RMSNorm
from serve_app.engine.models.llama import LlamaAttention
from serve_app.engine.sampling_params import SamplingParams
from tests.engine.checkpoints import build_checkpoint
from tests.engine.recording import RecordingExecutor

PROMPTS = [[5, 6, 7], list(range(10, 90)), [200] * 20]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)


def run(model: str, fast_paths: bool) -> tuple[list[list[int]], list[torch.Tensor], LLMEngine]:
    engine = LLMEngine(
        EngineConfig(
            model=model,
            attention_backend="cpu",
            dtype="float32",
            kv_cache_memory_bytes=8 << 20,
            max_model_len=128,
            max_num_batched_tokens=32,  # the 80-token prompt prefills in chunks
            cpu_fast_paths=fast_paths,
        )
    )
    engine.executor = recorder = RecordingExecutor(engine.executor)
    return engine.generate(PROMPTS, GREEDY), recorder.logits, engine


@pytest.fixture(scope="module")
def qk_norm_model(tmp_path_factory) -> str:
    return str(build_checkpoint("qwen3-qk-norm", tmp_path_factory.mktemp("qk")))


@pytest.mark.parametrize("model", ["tiny", "qk-norm"])
def test_fast_and_plain_paths_give_the_same_tokens_and_logits(model, qk_norm_model):
    model = qk_norm_model if model == "qk-norm" else model
    plain_tokens, plain_logits, plain = run(model, fast_paths=False)
    fast_tokens, fast_logits, fast = run(model, fast_paths=True)

    plain_modules = list(plain.executor.runner.model.modules())
    assert not plain.executor.runner.fast_paths.packed_weights
    assert not any(isinstance(m, (NativeRMSNorm, NativeSiluAndMul)) for m in plain_modules)
    fast_modules = list(fast.executor.runner.model.modules())
    assert fast.executor.runner.fast_paths.packed_weights
    assert all(type(m) is NativeRMSNorm for m in fast_modules if isinstance(m, RMSNorm))
    assert any(type(m) is NativeSiluAndMul for m in fast_modules)
    attention = [m for m in fast_modules if isinstance(m, LlamaAttention)]
    assert attention and all(type(m) is NativeRotaryLlamaAttention for m in attention)

    assert fast_tokens == plain_tokens
    assert len(fast_logits) == len(plain_logits)  # same schedule, step for step
    for step, (ours, reference) in enumerate(zip(fast_logits, plain_logits, strict=True)):
        error = (ours - reference).abs().max() / reference.abs().max()
        assert error.item() < 1e-5, step
