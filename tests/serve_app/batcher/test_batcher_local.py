"""The Batcher without Ray, over a real in-process ModelReplica: concurrent callers get the
engine's greedy tokens, each request's state records what it generated, a caller leaving
one request of a batch aborts that request alone, and `reconfigure` changes batching live.

`LocalReplica` stands in for the Serve handle only: it calls the replica's batch runner in
this process under a made-up abort channel name, and the batcher's AbortSender looks that
name up as a channel that calls the runner directly instead of through the AbortChannel
actor (that path is tested through Serve in test_batcher.py)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from serve_app.abort_channel import AbortSender
from serve_app.batcher.deployment import Batcher
from serve_app.config import load_app_config
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest
from serve_app.replica.batch_runner import BatchRunner
from serve_app.replica.deployment import ModelReplica

ENGINE_ARGS = {"kv_cache_memory_bytes": 2**20, "max_num_seqs": 8}
PROMPTS = [[5 + i, 17, 3 * i + 1, 40] for i in range(6)]
# Wide windows so a burst of callers is certainly batched: the arrival rate is counted
# over 10 windows, and a batch waits up to one window for its target size.
LOCAL_CHANNEL_NAME = "local-abort-channel"
BURSTY = {"max_wait_ms": 500, "target_ttft_ms": 10_000, "max_batch_size": 8}


class _LocalChannel:
    """The AbortChannel's `abort.remote(ids)`, applied in this process."""

    def __init__(self, runner: BatchRunner) -> None:
        self.abort = self
        self._runner = runner

    def remote(self, request_ids: list[str]) -> None:
        self._runner.abort(request_ids)


class _LocalResponses:
    def __init__(self, stream) -> None:
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._stream.__anext__()

    def cancel(self) -> None:
        asyncio.get_running_loop().create_task(self._stream.aclose())


class LocalReplica:
    """A replica handle for `Batcher`: `.options(...).remote(requests)` streams a batch."""

    def __init__(self, replica: ModelReplica) -> None:
        self.replica = replica
        self.calls: list[list[str]] = []  # request ids of each forwarded batch

    def options(self, **_) -> LocalReplica:
        return self

    def remote(self, requests: list[BatchRequest]) -> _LocalResponses:
        self.calls.append([r.request_id for r in requests])
        runner = self.replica.batches
        return _LocalResponses(runner.run(requests, LOCAL_CHANNEL_NAME))


def make(policy: dict | None = None) -> tuple[Batcher, LocalReplica]:
    config = load_app_config({"engine": ENGINE_ARGS, "batcher": {"policy": policy or {}}})
    local = LocalReplica(ModelReplica(config))

    def lookup(name: str) -> _LocalChannel:
        assert name == LOCAL_CHANNEL_NAME, name
        return _LocalChannel(local.replica.batches)

    return Batcher(config, local, AbortSender(lookup)), local


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def expected(params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    engine_config = load_app_config({"engine": ENGINE_ARGS}).engine
    return LLMEngine(engine_config).generate(prompts, params)


async def tokens_of(batcher: Batcher, index: int, params: SamplingParams) -> list[int]:
    """One caller's tokens; checks that the request's state keeps every one of them."""
    tokens: list[int] = []
    state = None
    async with aclosing(batcher.generate(PROMPTS[index], params, f"r{index}")) as stream:
        async for chunk in stream:
            tokens += chunk.token_ids
            state = state or (await batcher.live_requests()).get(f"r{index}")
            if state is not None:  # the batcher records a chunk before the caller reads it
                assert state.output_ids[: len(tokens)] == tokens
    assert state is not None and state.prompt_ids == PROMPTS[index]
    assert state.output_ids == tokens and state.finished and not state.cancelled
    assert state.finish_reason == "length" and state.remaining_max_tokens() == 0
    assert state.resume_prompt_ids() == PROMPTS[index] + tokens
    return tokens


def test_a_burst_is_batched_and_each_caller_gets_the_engines_greedy_tokens():
    batcher, local = make(BURSTY)
    params = greedy(6)

    async def run():
        for _ in range(12):  # recent arrivals: the policy now expects a burst
            batcher.policy.record_arrival()
        return await asyncio.gather(*(tokens_of(batcher, i, params) for i in range(6)))

    assert asyncio.run(run()) == expected(params)
    assert sorted(id for call in local.calls for id in call) == [f"r{i}" for i in range(6)]
    assert max(len(call) for call in local.calls) >= 2  # some callers shared a forward call
    assert sum(size * count for size, count in batcher.batch_size_counts.items()) == 6
    assert asyncio.run(batcher.live_requests()) == {}
    local.replica.engine.shutdown()


def test_light_traffic_is_forwarded_at_once_one_by_one():
    batcher, local = make()
    params = greedy(3)

    async def run():
        return [await tokens_of(batcher, i, params) for i in range(3)]

    assert asyncio.run(run()) == expected(params, PROMPTS[:3])
    assert local.calls == [["r0"], ["r1"], ["r2"]]
    local.replica.engine.shutdown()


def test_leaving_one_request_of_a_batch_aborts_it_alone():
    batcher, local = make(BURSTY)
    params = greedy(30)
    states = {}

    async def leave_after_two_chunks() -> list[int]:
        tokens: list[int] = []
        async with aclosing(batcher.generate(PROMPTS[1], params, "r1")) as stream:
            async for chunk in stream:
                tokens += chunk.token_ids
                states.update(await batcher.live_requests())
                if len(tokens) >= 2:
                    break
        return tokens

    async def run():
        for _ in range(12):
            batcher.policy.record_arrival()
        others = [tokens_of(batcher, i, params) for i in (0, 2)]
        return await asyncio.gather(leave_after_two_chunks(), *others)

    left, first, third = asyncio.run(run())
    full = expected(params, PROMPTS[:3])
    assert [sorted(call) for call in local.calls] == [["r0", "r1", "r2"]]  # one batch
    assert (first, third) == (full[0], full[2])
    assert left == full[1][: len(left)] and len(left) < 30
    assert states["r1"].batch_id == 0 and states["r1"].cancelled
    stats = local.replica.engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_used_kv_blocks) == (0, 0, 0)
    assert local.replica.num_cancelled_streams == 1
    local.replica.engine.shutdown()


def test_a_request_the_engine_rejects_fails_alone():
    batcher, local = make(BURSTY)
    params = greedy(4)

    async def bad() -> None:
        async for _ in batcher.generate([10**9], params, "bad"):
            pass

    async def run():
        for _ in range(12):
            batcher.policy.record_arrival()
        return await asyncio.gather(bad(), tokens_of(batcher, 0, params), return_exceptions=True)

    error, tokens = asyncio.run(run())
    assert isinstance(error, RequestError) and "prompt token ids" in str(error)
    assert tokens == expected(params, PROMPTS[:1])[0]
    local.replica.engine.shutdown()


def test_reconfigure_changes_the_batch_size_live():
    batcher, local = make(BURSTY)
    params = greedy(2)

    async def burst(first: int) -> None:
        for _ in range(12):
            batcher.policy.record_arrival()
        await asyncio.gather(*(tokens_of(batcher, i, params) for i in range(first, first + 3)))

    async def run():  # one event loop, as in a Serve replica
        await burst(0)
        batcher.reconfigure({**BURSTY, "max_batch_size": 1})
        assert batcher.policy.config.max_batch_size == 1
        await burst(3)

    asyncio.run(run())
    sizes = [len(call) for call in local.calls]
    assert sizes[0] == 3 and sizes[-3:] == [1, 1, 1]
    with pytest.raises(ValueError, match="max_batch_size"):
        batcher.reconfigure({"max_batch_size": 0})
    local.replica.engine.shutdown()


def test_batcher_config_names_bad_policy_knobs_and_becomes_user_config():
    from serve_app.app import BATCHER_NAME, batcher_options
    from serve_app.config import AppConfigError

    with pytest.raises(AppConfigError, match=r"batcher.policy: .*unknown batch policy.*max_wait"):
        load_app_config({"batcher": {"policy": {"max_wait": 5}}})
    with pytest.raises(AppConfigError, match=r"batcher.policy: .*max_batch_size must be"):
        load_app_config({"batcher.policy.max_batch_size": "0"})
    config = load_app_config({"batcher.policy.max_wait_ms": "5", "batcher.num_cpus": "0.5"})
    options = batcher_options(config)
    assert options["name"] == BATCHER_NAME
    assert options["user_config"] == {"max_wait_ms": 5}
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert load_app_config({}).batcher.enabled
