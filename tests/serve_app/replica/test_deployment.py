"""ModelReplica without Ray: a one-request batch streams the engine's tokens, leaving early
frees its KV blocks, and the health check fails when the engine loop is dead or stalled."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from serve_app.config import load_app_config
from serve_app.engine.engine import LLMEngine
from serve_app.engine.errors import EngineDeadError
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest
from serve_app.replica.deployment import ModelReplica

ARGS = {"engine": {"kv_cache_memory_bytes": 2**20, "max_num_seqs": 4}}
PROMPT = [72, 101, 108, 108, 111]


async def single(replica: ModelReplica, prompt: list[int], params: SamplingParams):
    """One request through generate_batch: its TokenChunks."""
    async with aclosing(replica.generate_batch([BatchRequest("r1", prompt, params)])) as stream:
        async for message in stream:
            for tagged in message.chunks:
                assert tagged.request_id == "r1" and tagged.chunk is not None, tagged
                yield tagged.chunk


def make_replica(**replica_args) -> ModelReplica:
    return ModelReplica(load_app_config({**ARGS, "replica": replica_args}))


def test_streams_the_engines_greedy_tokens_and_counts():
    replica = make_replica()
    params = SamplingParams(max_tokens=6, temperature=0)
    [expected] = LLMEngine(load_app_config(ARGS).engine).generate([PROMPT], params)

    async def run():
        return [chunk async for chunk in single(replica, PROMPT, params)]

    chunks = asyncio.run(run())
    assert [t for chunk in chunks for t in chunk.token_ids] == expected
    assert chunks[-1].finished and chunks[-1].finish_reason in ("stop", "length")
    assert chunks[-1].num_output_tokens == len(expected)
    assert all(chunk.num_prompt_tokens == len(PROMPT) for chunk in chunks)
    replica.engine.shutdown()


def test_stream_interval_groups_tokens_without_changing_them():
    replica = make_replica(stream_interval_tokens=4)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    [expected] = LLMEngine(load_app_config(ARGS).engine).generate([PROMPT], params)

    async def run():
        return [chunk async for chunk in single(replica, PROMPT, params)]

    chunks = [chunk for chunk in asyncio.run(run()) if chunk.token_ids]
    assert [t for chunk in chunks for t in chunk.token_ids] == expected
    assert [len(chunk.token_ids) for chunk in chunks] == [1, 4, 4, 1]
    assert chunks[-1].finished and chunks[-1].num_output_tokens == 10
    replica.engine.shutdown()


def test_leaving_early_aborts_and_frees_kv_blocks():
    replica = make_replica()
    params = SamplingParams(max_tokens=1000, temperature=0, ignore_eos=True)

    async def run():
        stream = single(replica, PROMPT, params)
        await anext(stream)
        during = await replica.stats()
        await stream.aclose()
        for _ in range(100):
            after = await replica.stats()
            if after["num_running"] == 0 and after["num_used_kv_blocks"] == 0:
                break
            await asyncio.sleep(0.05)
        return during, after

    during, after = asyncio.run(run())
    assert during["num_running"] == 1 and during["num_used_kv_blocks"] > 0
    assert (after["num_running"], after["num_used_kv_blocks"]) == (0, 0)
    assert after["num_cancelled_streams"] == 1
    replica.engine.shutdown()


def test_health_check_fails_when_the_engine_loop_is_dead():
    replica = make_replica()
    asyncio.run(replica.check_health())
    replica.engine.shutdown()
    with pytest.raises(EngineDeadError, match="not running"):
        asyncio.run(replica.check_health())


def test_health_check_fails_when_the_engine_loop_stalls():
    replica = make_replica(stall_timeout_s=2.0)
    engine = replica.engine.engine
    real_step = engine.step

    def slow_step():
        time.sleep(4.0)  # one step that hangs (a stuck kernel, a dead TP peer)
        return real_step()

    engine.step = slow_step

    async def run():
        stream = single(replica, PROMPT, SamplingParams(max_tokens=1))
        consumer = asyncio.create_task(anext(stream))
        await asyncio.sleep(3.0)
        with pytest.raises(EngineDeadError, match="no progress"):
            await replica.check_health()
        await consumer  # the step finishes; the loop recovers
        await stream.aclose()
        for _ in range(40):  # the loop marks its progress just after handing out the output
            try:
                await replica.check_health()
                return
            except EngineDeadError:
                await asyncio.sleep(0.05)
        await replica.check_health()

    asyncio.run(run())
    replica.engine.shutdown()
