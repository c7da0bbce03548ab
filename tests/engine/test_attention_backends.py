"""End to end: greedy generation on the tiny model with attention_backend="triton" (the Triton
interpreter on CPU) and "cpu" (the native decode kernel) gives exactly the tokens of
attention_backend="torch", through chunked prefill, prefix-cache hits and batches that mix
decodes with prefill chunks; and how `auto` resolves."""

from __future__ import annotations

import os

import pytest
import torch

# Triton reads this when the kernels are decorated, i.e. on the first import of `kernels.*`
# kernel modules, which happens below when the engine builds its backend.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from serve_app.engine.attention_backend import make_attention_backend, resolve_attention_backend
from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams

SHARED_PREFIX = [(7 * i + 3) % 250 for i in range(40)]


def generate_all(backend: str) -> tuple[list[list[int]], LLMEngine]:
    engine = LLMEngine(
        EngineConfig(
            model="tiny",
            attention_backend=backend,
            dtype="float32",
            kv_cache_memory_bytes=8 << 20,
            max_model_len=128,
            max_num_batched_tokens=32,  # the 40- and 70-token prompts prefill in chunks
        )
    )
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    first = engine.generate([SHARED_PREFIX, [5], list(range(100, 170)), [9, 8, 7]], params)
    # Second round: the shared prefix's full blocks are cached, so these extend a prefix.
    second = engine.generate([[*SHARED_PREFIX, 1, 2, 3], [*SHARED_PREFIX[:32], 77]], params)
    return first + second, engine


@pytest.mark.parametrize(
    ("backend", "class_name"),
    [("triton", "TritonAttentionBackend"), ("cpu", "CpuAttentionBackend")],
)
def test_backend_generates_the_torch_backend_tokens(backend, class_name):
    expected, _ = generate_all("torch")
    got, engine = generate_all(backend)

    assert engine.executor.runner.attention_backend == backend
    attention = engine.executor.runner.model.model.layers[0].self_attn.attn
    assert type(attention.backend).__name__ == class_name
    assert engine.stats().prefix_cache_hit_rate > 0
    assert all(len(tokens) == 8 for tokens in got)
    assert got == expected


@pytest.mark.parametrize(
    ("configured", "device", "resolved"),
    [
        ("auto", "cuda", "triton"),
        ("auto", "cpu", "cpu"),  # this machine has a C compiler: the native decode kernel
        ("triton", "cpu", "triton"),
        ("torch", "cpu", "torch"),
    ],
)
def test_attention_backend_resolution(configured, device, resolved):
    config = EngineConfig(attention_backend=configured)
    assert resolve_attention_backend(config, torch.device(device)) == resolved


def test_without_a_compiler_auto_falls_back_and_cpu_is_refused(tmp_path, monkeypatch, caplog):
    """No C compiler (and no kernel built before in this cache): `auto` runs the torch
    reference and says why; asking for `cpu` explicitly is a startup error naming the cause."""
    monkeypatch.setenv("SERVE_APP_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with caplog.at_level("WARNING"):
        assert resolve_attention_backend(EngineConfig(), torch.device("cpu")) == "torch"
    assert "no-such-compiler-xyz" in caplog.text
    with pytest.raises(ConfigError, match=r"attention_backend='cpu'.*no-such-compiler-xyz"):
        make_attention_backend("cpu")
