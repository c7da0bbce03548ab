"""The Batcher without Ray, over a real in-process ModelReplica, fed by the ingress's own
BatchingTokenStreamer: concurrent callers get the engine's greedy tokens, each request's
state records what it generated, a caller leaving one request of a batch aborts that
request alone, and `reconfigure` changes batching live.

`LocalHandle` stands in for a Serve handle only: it calls a server's `generate_batch` in
this process and names a made-up abort channel in the first message; the callers'
AbortSenders look that name up as a channel that calls the server directly instead of
through the AbortChannel actor (that path is tested through Serve in test_batcher.py)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing

import pytest

from serve_app.abort_channel import AbortSender
from serve_app.batcher.deployment import Batcher
from serve_app.config import load_app_config
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.sampling_params import SamplingParams
from serve_app.ingress.token_source import BatchingTokenStreamer
from serve_app.messages import BatchRequest
from serve_app.replica.deployment import ModelReplica

ENGINE_ARGS = {"kv_cache_memory_bytes": 2**20, "max_num_seqs": 8}
PROMPTS = [[5 + i, 17, 3 * i + 1, 40] for i in range(6)]
# Wide windows so a burst of callers is certainly batched: the arrival rate is counted
# over 10 windows, and a batch waits up to one window for its target size.
LOCAL_CHANNEL_NAME = "local-abort-channel"
BURSTY = {"max_wait_ms": 500, "target_ttft_ms": 10_000, "max_batch_size": 8}


class _LocalChannel:
    """The AbortChannel's `abort.remote(ids)`, applied in this process."""

    def __init__(self, on_abort) -> None:
        self.abort = self
        self._on_abort = on_abort

    def remote(self, request_ids: list[str]) -> None:
        self._on_abort(request_ids)


class _LocalResponses:
    def __init__(self, stream) -> None:
        self._stream = stream

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._stream.__anext__()

    def cancel(self) -> None:
        asyncio.get_running_loop().create_task(self._stream.aclose())


class LocalHandle:
    """A deployment handle for a BatchCall: `.options(...).remote(requests)` streams a batch."""

    def __init__(self, generate_batch, channel_name: str) -> None:
        self._generate_batch = generate_batch
        self.channel_name = channel_name
        self.calls: list[list[str]] = []  # request ids of each call

    def options(self, **_) -> LocalHandle:
        return self

    def remote(self, requests: list[BatchRequest], routing=None) -> _LocalResponses:
        """`routing`: the RoutingHint a Serve router reads (tests/.../test_failover_local.py
        routes between local replicas with it); one local server here."""
        self.calls.append([r.request_id for r in requests])
        return _LocalResponses(self._named(self._generate_batch(requests)))

    async def _named(self, stream):
        async with aclosing(stream):
            async for message in stream:
                message.abort_channel = self.channel_name  # the callers keep the first
                yield message


class Local:
    """Ingress streamer -> Batcher -> ModelReplica, in this process."""

    def __init__(self, policy: dict | None = None) -> None:
        config = load_app_config({"engine": ENGINE_ARGS, "batcher": {"policy": policy or {}}})
        self.replica = ModelReplica(config)
        self.to_replica = LocalHandle(self.replica.batches.run, "replica-channel")
        self.batcher = Batcher(config, self.to_replica, AbortSender(self._lookup))
        self.to_batcher = LocalHandle(self.batcher.generate_batch, "batcher-channel")
        self.streamer = BatchingTokenStreamer(self.to_batcher, AbortSender(self._lookup))
        self.calls = self.to_replica.calls  # what the batcher forwarded

    def _lookup(self, name: str) -> _LocalChannel:
        servers = {"replica-channel": self.replica.batches, "batcher-channel": self.batcher}
        return _LocalChannel(servers[name].abort_requests)

    def stream(self, index: int, params: SamplingParams, prompt: list[int] | None = None):
        prompt = PROMPTS[index] if prompt is None else prompt
        return self.streamer.stream(prompt, params, f"r{index}")


def make(policy: dict | None = None) -> tuple[Batcher, Local]:
    local = Local(policy)
    return local.batcher, local


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)


def expected(params: SamplingParams, prompts=PROMPTS) -> list[list[int]]:
    engine_config = load_app_config({"engine": ENGINE_ARGS}).engine
    return LLMEngine(engine_config).generate(prompts, params)


async def tokens_of(local: Local, index: int, params: SamplingParams) -> list[int]:
    """One caller's tokens; checks that the request's state keeps every one of them."""
    tokens: list[int] = []
    state = None
    batcher = local.batcher
    async with aclosing(local.stream(index, params)) as stream:
        async for chunk in stream:
            tokens += chunk.token_ids
            state = state or (await batcher.live_requests()).get(f"r{index}")
            if state is not None:  # the batcher records a chunk before the caller reads it
                assert state.output_ids[: len(tokens)] == tokens
    # A short request can finish (and leave the batcher) before its caller reads a chunk.
    if state is not None:
        assert state.prompt_ids == PROMPTS[index]
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
        return await asyncio.gather(*(tokens_of(local, i, params) for i in range(6)))

    assert asyncio.run(run()) == expected(params)
    assert sorted(id for call in local.calls for id in call) == [f"r{i}" for i in range(6)]
    assert max(len(call) for call in local.calls) >= 2  # some callers shared a forward call
    assert sum(size * count for size, count in batcher.batch_size_counts.items()) == 6
    assert asyncio.run(batcher.live_requests()) == {}
    local.replica.engine.shutdown()


def test_light_traffic_is_forwarded_at_once_one_by_one():
    _, local = make()
    params = greedy(3)

    async def run():
        return [await tokens_of(local, i, params) for i in range(3)]

    assert asyncio.run(run()) == expected(params, PROMPTS[:3])
    assert local.calls == [["r0"], ["r1"], ["r2"]]
    local.replica.engine.shutdown()


def test_leaving_one_request_of_a_batch_aborts_it_alone():
    batcher, local = make(BURSTY)
    params = greedy(30)
    states = {}

    async def leave_after_two_chunks() -> list[int]:
        tokens: list[int] = []
        async with aclosing(local.stream(1, params)) as stream:
            async for chunk in stream:
                tokens += chunk.token_ids
                states.update(await batcher.live_requests())
                if len(tokens) >= 2:
                    break
        return tokens

    async def run():
        for _ in range(12):
            batcher.policy.record_arrival()
        others = [tokens_of(local, i, params) for i in (0, 2)]
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
        async for _ in local.streamer.stream([10**9], params, "bad"):
            pass

    async def run():
        for _ in range(12):
            batcher.policy.record_arrival()
        return await asyncio.gather(bad(), tokens_of(local, 0, params), return_exceptions=True)

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
        await asyncio.gather(*(tokens_of(local, i, params) for i in range(first, first + 3)))

    async def run():  # one event loop, as in a Serve replica
        await burst(0)
        batcher.reconfigure({**BURSTY, "max_batch_size": 1})
        assert batcher.policy.config.max_batch_size == 1
        await burst(3)

    asyncio.run(run())
    sizes = [len(call) for call in local.calls]
    assert sizes[0] == 3 and sizes[-3:] == [1, 1, 1]
    local.replica.engine.shutdown()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_rejected_user_config_keeps_the_policy_and_is_logged_naming_the_field():
    """Before: reconfigure raised, and Serve stopped the live Batcher replica for it (see
    serve_app/batcher/deployment.py); on a deploy every replica went."""
    config = load_app_config({"batcher": {"policy": BURSTY}})
    batcher = Batcher(config, LocalHandle(None, "replica-channel"))  # no call reaches it
    batcher.reconfigure({**BURSTY, "max_batch_size": 4})
    kept = batcher.policy.config
    records = _Records()
    serve_logger = logging.getLogger("ray.serve")  # Serve's replica logger
    serve_logger.addHandler(records)
    try:
        batcher.reconfigure({"max_batch_size": 2, "max_wiat_ms": 3})  # no exception
    finally:
        serve_logger.removeHandler(records)
    assert batcher.policy.config is kept
    assert batcher.policy.config.max_batch_size == 4
    stats = asyncio.run(batcher.stats())
    assert stats["policy"]["max_batch_size"] == 4
    assert stats["rejected_user_config"].startswith("unknown field 'max_wiat_ms' (allowed: ")
    [message] = records.messages
    assert "Batcher user_config" in message and "unknown field 'max_wiat_ms'" in message
    batcher.reconfigure({"max_batch_size": 2})  # a valid one applies, and clears the error
    assert batcher.policy.config.max_batch_size == 2
    assert asyncio.run(batcher.stats())["rejected_user_config"] is None


def test_batcher_config_names_bad_policy_knobs_and_becomes_user_config():
    from serve_app.app import BATCHER_NAME, batcher_options
    from serve_app.config import AppConfigError

    with pytest.raises(AppConfigError, match=r"unknown field 'batcher.policy.max_wait'"):
        load_app_config({"batcher": {"policy": {"max_wait": 5}}})
    with pytest.raises(AppConfigError, match=r"batcher.policy.max_batch_size: .*\[1, 4096\]"):
        load_app_config({"batcher.policy.max_batch_size": "0"})
    config = load_app_config({"batcher.policy.max_wait_ms": "5", "batcher.num_cpus": "0.5"})
    options = batcher_options(config)
    assert options["name"] == BATCHER_NAME
    assert options["user_config"] == {"max_wait_ms": 5}
    assert options["ray_actor_options"] == {"num_cpus": 0.5}
    assert load_app_config({}).batcher.enabled
