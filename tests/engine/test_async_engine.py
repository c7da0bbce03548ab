"""AsyncEngine: concurrent streams, cancellation frees KV, seeded requests reproduce."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.mailbox import EngineRequest, Mailbox
from serve_app.engine.sampling_params import SamplingParams

CONFIG = EngineConfig(model="tiny", kv_cache_memory_bytes=32 << 20, max_model_len=512)


@pytest.fixture(scope="module")
def engine():
    engine = AsyncEngine(CONFIG)
    yield engine
    engine.shutdown()


async def collect(engine: AsyncEngine, prompt: list[int], params: SamplingParams) -> list[int]:
    tokens: list[int] = []
    async for output in engine.generate(prompt, params):
        tokens += output.new_token_ids
    assert output.finished and output.num_output_tokens == len(tokens)
    return tokens


def test_concurrent_streams_match_the_offline_engine(engine) -> None:
    prompts = [[5, 6, 7][: 1 + i % 3] + [i] * (i + 1) for i in range(6)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)

    async def main():
        return await asyncio.gather(*(collect(engine, p, params) for p in prompts))

    assert asyncio.run(main()) == LLMEngine(CONFIG).generate(prompts, params)


def test_seeded_request_reproduces_with_different_neighbours(engine) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234, ignore_eos=True)
    noisy = SamplingParams(max_tokens=20, temperature=1.0, ignore_eos=True)

    async def main():
        alone = await collect(engine, [9, 9, 9], seeded)
        crowd = await asyncio.gather(
            collect(engine, [1, 2], noisy),
            collect(engine, [9, 9, 9], seeded),
            collect(engine, [3] * 40, noisy),
        )
        return alone, crowd[1]

    alone, crowded = asyncio.run(main())
    assert alone == crowded


def test_cancelled_stream_aborts_and_frees_its_blocks(engine) -> None:
    async def main():
        started = asyncio.Event()

        async def endless():
            params = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
            async for _ in engine.generate([4] * 50, params):
                started.set()

        task = asyncio.create_task(endless())
        await asyncio.wait_for(started.wait(), 10)
        assert engine.stats().num_used_kv_blocks > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            stats = engine.stats()
            if stats.num_running == 0 and stats.num_used_kv_blocks == 0:
                return stats
            await asyncio.sleep(0.05)
        return engine.stats()

    stats = asyncio.run(main())
    assert stats.num_running == 0 and stats.num_used_kv_blocks == 0
    assert engine.num_active_streams == 0


def test_invalid_request_raises_and_engine_stays_healthy(engine) -> None:
    async def main():
        with pytest.raises(RequestError, match="empty prompt"):
            await collect(engine, [], SamplingParams())
        return await collect(engine, [1], SamplingParams(max_tokens=3, ignore_eos=True))

    assert len(asyncio.run(main())) == 3
    engine.check_health()


def test_the_engine_is_built_on_the_engine_thread():
    """Loading and stepping share one thread, hence one OpenMP pool (see async_engine.py)."""
    import threading

    built_on: list[str] = []

    def build(config: EngineConfig) -> LLMEngine:
        built_on.append(threading.current_thread().name)
        return LLMEngine(config)

    engine = AsyncEngine(CONFIG, build_engine=build)
    try:
        assert built_on == ["engine-loop"]
    finally:
        engine.shutdown()


def test_a_build_error_reaches_the_caller():
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        AsyncEngine(EngineConfig(model="/nonexistent/no-such-model"))


def test_an_id_aborted_and_added_again_mid_step_hears_only_the_new_request() -> None:
    """A failover resumed on the same replica: the old sequence's step in flight must not
    reach the new mailbox (its counts would run ahead of what the caller holds)."""
    engine = AsyncEngine(CONFIG)
    real_step = engine.engine.step

    def slow_step():
        time.sleep(0.05)  # the abort and the re-add land while a step runs
        return real_step()

    engine.engine.step = slow_step
    prompt, params = (
        [3, 1, 4, 1, 5],
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
    )
    [expected] = LLMEngine(CONFIG).generate([prompt], params)

    async def main() -> list:
        first = Mailbox.on_running_loop()
        engine.add_requests([EngineRequest("r", prompt, params)], first)
        held = [t for item in await first.take() for t in item.new_token_ids]
        await asyncio.sleep(0.02)  # inside the next step
        engine.abort("r")
        second = Mailbox.on_running_loop()
        engine.add_requests([EngineRequest("r", prompt, params, held)], second)
        outputs = []
        while not (outputs and outputs[-1].finished):
            outputs += await second.take()
        return held, outputs

    held, outputs = asyncio.run(main())
    engine.shutdown()
    counts = [output.num_output_tokens for output in outputs]
    assert counts == list(range(len(held) + 1, 13))
    assert held + [t for output in outputs for t in output.new_token_ids] == expected
