"""Tensor parallelism on CPU with gloo: TP=2 against TP=1 on every architecture, start-up
errors for models that do not split, a killed worker failing fast, and several TP engines
in one process."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.config import ConfigError, EngineConfig
from serve_app.engine.engine import LLMEngine
from serve_app.engine.errors import EngineDeadError, TensorParallelError
from serve_app.engine.model_files import read_architecture
from serve_app.engine.parallel.executor import (
    InProcessExecutor,
    make_executor,
    plan_kv_blocks_over_ranks,
)
from serve_app.engine.parallel.multiproc_executor import MultiprocessExecutor
from serve_app.engine.parallel.sizes import check_tensor_parallel_sizes
from serve_app.engine.parallel.worker import KVMemoryReport
from serve_app.engine.sampling_params import SamplingParams
from tests.engine.checkpoints import VARIANTS, build_checkpoint
from tests.engine.recording import RecordingExecutor

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
PROMPTS = [
    [7],
    [3, 9, 27, 81, 243 % 256, 17, 51, 153, 203],
    [(5 * i + 11) % 256 for i in range(40)],
]


def run_greedy(directory: Path, tensor_parallel_size: int) -> tuple[list[list[int]], list]:
    config = EngineConfig(
        model=str(directory),
        tensor_parallel_size=tensor_parallel_size,
        kv_cache_memory_bytes=4 << 20,  # ample for both sizes: identical schedules
        max_model_len=128,
    )
    executor = RecordingExecutor(make_executor(config, directory))
    engine = LLMEngine(config, executor=executor)
    try:
        tokens = engine.generate(PROMPTS, GREEDY)
        if tensor_parallel_size > 1:
            arch = read_architecture(directory)
            expected_kv_heads = max(1, arch.num_kv_heads // tensor_parallel_size)
            assert executor.runner.num_kv_heads_per_rank == expected_kv_heads
    finally:
        engine.shutdown()
    return tokens, executor.logits


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory) -> Path:
    return build_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_tp2_matches_tp1_token_for_token_and_logits(checkpoint: Path) -> None:
    tp1_tokens, tp1_logits = run_greedy(checkpoint, 1)
    tp2_tokens, tp2_logits = run_greedy(checkpoint, 2)

    assert tp2_tokens == tp1_tokens
    assert all(len(tokens) == GREEDY.max_tokens for tokens in tp1_tokens)
    assert len({tuple(tokens) for tokens in tp1_tokens}) == len(PROMPTS)  # not degenerate
    assert len(tp2_logits) == len(tp1_logits)  # same schedule, step for step
    for step, (ours, reference) in enumerate(zip(tp2_logits, tp1_logits, strict=True)):
        assert ours.shape == reference.shape == (reference.shape[0], 256), step
        assert max_relative_error(ours, reference) < 1e-4, step


def test_tp1_runs_in_process_without_a_group() -> None:
    config = EngineConfig(model="tiny", kv_cache_memory_bytes=1 << 20, max_model_len=64)
    engine = LLMEngine(config)
    assert isinstance(engine.executor, InProcessExecutor)
    assert engine.executor.runner.ctx.group is None
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize(
    ("variant", "tensor_parallel_size", "message"),
    [
        ("qwen2-qkv-bias", 3, "num_attention_heads (4) is not divisible by 3"),
        ("qwen2-qkv-bias", 3, "vocab_size (256) is not divisible by 3"),
        ("qwen2-qkv-bias", 3, "intermediate_size (128) is not divisible by 3"),
        ("qwen2-qkv-bias", 3, "3 is not a multiple of num_key_value_heads (2)"),
        ("llama-tied-bias-linearrope-headdim32", 8, "num_attention_heads (4) is not divisible"),
    ],
)
def test_models_that_do_not_split_fail_at_start_up(
    variant: str, tensor_parallel_size: int, message: str, tmp_path: Path
) -> None:
    directory = build_checkpoint(variant, tmp_path)
    config = EngineConfig(model=str(directory), tensor_parallel_size=tensor_parallel_size)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"EngineConfig\.tensor_parallel_size") as error:
        LLMEngine(config)
    assert message in str(error.value)
    assert time.monotonic() - started < 5.0
    assert multiprocessing.active_children() == []  # refused before any worker started


def test_kv_head_counts_that_split_or_replicate_are_accepted(tmp_path: Path) -> None:
    arch = read_architecture(build_checkpoint("mistral-gqa4", tmp_path))  # 4 heads, 1 KV head
    for size in (2, 4):
        check_tensor_parallel_sizes(arch, size)
    with pytest.raises(ConfigError, match="num_attention_heads \\(4\\) is not divisible by 8"):
        check_tensor_parallel_sizes(arch, 8)


def test_every_rank_gets_the_kv_blocks_of_the_tightest_rank() -> None:
    config = EngineConfig(block_size=16, max_num_seqs=128)
    reports = [KVMemoryReport(10_000, 100), KVMemoryReport(5_000, 100), KVMemoryReport(7_000, 100)]
    assert plan_kv_blocks_over_ranks(reports, config, max_model_len=64) == 50


TP2_TINY = EngineConfig(
    model="tiny", tensor_parallel_size=2, kv_cache_memory_bytes=1 << 20, max_model_len=256
)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_killed_worker_fails_fast_with_a_clear_error_and_releases_resources() -> None:
    threads_before = torch.get_num_threads()
    engine = AsyncEngine(TP2_TINY)
    executor = engine.engine.executor
    assert isinstance(executor, MultiprocessExecutor)
    worker = executor.processes[0]
    killed_at: list[float] = []

    def kill_worker() -> None:
        killed_at.append(time.monotonic())
        os.kill(worker.pid, signal.SIGKILL)

    async def stream_until_failure() -> int:
        received = 0
        long_request = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        async for output in engine.generate([1, 2, 3], long_request):
            received += len(output.new_token_ids)
            if received == 5:  # mid-generation, possibly mid-collective
                threading.Timer(0.05, kill_worker).start()
        return received

    with pytest.raises(EngineDeadError) as error:
        asyncio.run(stream_until_failure())
    failed_after = time.monotonic() - killed_at[0]

    assert failed_after < 5.0
    assert "tensor-parallel worker rank 1" in str(error.value)
    assert "SIGKILL" in str(error.value)
    with pytest.raises(EngineDeadError):
        engine.check_health()
    with pytest.raises(TensorParallelError, match="rank 1"):
        executor.check_health()
    # Released: no live worker, the KV cache dropped, the host's thread count untouched.
    assert not any(process.is_alive() for process in executor.processes)
    assert executor.runner.kv_caches == []
    assert torch.get_num_threads() == threads_before
    engine.shutdown()
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(60)
def test_a_worker_that_raises_reports_its_traceback_to_the_engine() -> None:
    engine = LLMEngine(TP2_TINY)
    executor = engine.executor
    executor._send_all("allocate_kv_cache", -1)  # only rank 1 is told: only rank 1 fails
    with pytest.raises(TensorParallelError) as error:
        engine.generate([[1, 2, 3]], GREEDY)
    message = str(error.value)
    assert "tensor-parallel worker rank 1" in message and "exited with code 1" in message
    assert "allocate_kv_cache" in message  # the worker's own traceback came back
    assert not executor.processes[0].is_alive()
    with pytest.raises(TensorParallelError, match="exited with code 1"):
        engine.generate([[1, 2, 3]], GREEDY)  # stays failed, fails at once
    engine.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_two_tp_engines_live_side_by_side_in_one_process() -> None:
    prompts = [[1, 2, 3], [40, 41]]
    expected = LLMEngine(EngineConfig(model="tiny", max_model_len=256)).generate(prompts, GREEDY)
    first = LLMEngine(TP2_TINY)
    second = LLMEngine(TP2_TINY)
    try:
        ports = {engine.executor.driver.group.rendezvous.port for engine in (first, second)}
        assert len(ports) == 2
        assert first.generate(prompts, GREEDY) == expected
        assert second.generate(prompts, GREEDY) == expected
        first.shutdown()
        assert second.generate(prompts, GREEDY) == expected  # unaffected by the other's end
    finally:
        first.shutdown()
        second.shutdown()
    assert multiprocessing.active_children() == []
