"""Prefix caching, chunked prefill and preemption change how work is done, never the tokens."""

from __future__ import annotations

import pytest
import torch

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.sampling_params import SamplingParams
from tests.engine.checkpoints import build_checkpoint

NUM_REQUESTS = 32
MAX_MODEL_LEN = 256
BYTES_PER_BLOCK = 2 * 16 * 2 * 16 * 2 * 4  # K+V, block 16, 2 KV heads, head_dim 16, 2 layers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_checkpoint("llama-gqa-llama3rope", tmp_path_factory.mktemp("invariance"))


@pytest.fixture(scope="module")
def workload():
    """32 prompts: shared 40-token system prefixes (two of them) plus ragged suffixes."""
    generator = torch.Generator().manual_seed(3)
    prefixes = [torch.randint(3, 256, (40,), generator=generator).tolist() for _ in range(2)]
    prompts, params = [], []
    for index in range(NUM_REQUESTS):
        suffix_len = int(torch.randint(1, 80, (1,), generator=generator))
        suffix = torch.randint(3, 256, (suffix_len,), generator=generator).tolist()
        prompts.append(prefixes[index % 2] + suffix)
        params.append(SamplingParams(max_tokens=8 + index % 24, temperature=0.0, ignore_eos=True))
    return prompts, params


def run(model_dir, workload, **overrides) -> tuple[list[list[int]], LLMEngine]:
    settings = {
        "model": str(model_dir),
        "max_model_len": MAX_MODEL_LEN,
        "kv_cache_memory_bytes": 4096 * BYTES_PER_BLOCK,
        "enable_prefix_caching": False,
        "enable_chunked_prefill": False,
        "max_num_batched_tokens": 4096,
        "max_num_seqs": NUM_REQUESTS,
    }
    engine = LLMEngine(EngineConfig(**{**settings, **overrides}))
    prompts, params = workload
    return engine.generate(prompts, params), engine


@pytest.fixture(scope="module")
def baseline(model_dir, workload):
    outputs, engine = run(model_dir, workload)
    assert engine.stats().num_preemptions == 0
    return outputs


def test_prefix_caching_keeps_outputs(model_dir, workload, baseline) -> None:
    outputs, engine = run(model_dir, workload, enable_prefix_caching=True, max_num_seqs=4)
    assert engine.block_manager.prefix_hit_tokens > 0
    assert outputs == baseline


def test_chunked_prefill_keeps_outputs(model_dir, workload, baseline) -> None:
    outputs, _ = run(model_dir, workload, enable_chunked_prefill=True, max_num_batched_tokens=32)
    assert outputs == baseline


def test_preemption_keeps_outputs(model_dir, workload, baseline) -> None:
    # 20 blocks hold one 256-token sequence, far less than 32 concurrent requests need.
    outputs, engine = run(model_dir, workload, kv_cache_memory_bytes=20 * BYTES_PER_BLOCK)
    assert engine.stats().num_preemptions > 0
    assert outputs == baseline


def test_all_three_together_keep_outputs(model_dir, workload, baseline) -> None:
    outputs, engine = run(
        model_dir,
        workload,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        max_num_batched_tokens=48,
        kv_cache_memory_bytes=24 * BYTES_PER_BLOCK,
    )
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert engine.block_manager.prefix_hit_tokens > 0
    assert stats.num_running == stats.num_waiting == stats.num_used_kv_blocks == 0
    assert outputs == baseline
