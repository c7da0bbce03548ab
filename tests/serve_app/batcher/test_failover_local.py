"""Mid-stream failover without Ray: when the replica serving a batch dies part-way, the
batcher resumes each of its requests elsewhere with the tokens it already has; every
caller gets exactly the tokens (greedy, and seeded with penalties) and counts of a
fault-free run, with no gap and no repeated token. A request the engine rejects is never
retried, and failover switched off hands the failure to the caller. A request's resumes
avoid the replicas that failed it (routed by the app's own DrainAwareRouter)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import aclosing

import pytest
from ray.exceptions import ActorDiedError
from ray.serve._private.common import RequestMetadata
from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import PendingRequest

from serve_app.batcher.failover import backoff_s, is_replica_failure
from serve_app.engine.engine import LLMEngine, RequestError
from serve_app.engine.errors import EngineDeadError
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest
from tests.serve_app.batcher.test_batcher_local import (
    ENGINE_ARGS,
    PROMPTS,
    Local,
    LocalHandle,
    _LocalResponses,
)
from tests.serve_app.replica.router_doubles import Replica, router_seeing

FAST_FAILOVER = {"backoff_s": 0.01, "max_backoff_s": 0.05}


class DyingReplica(LocalHandle):
    """The first `num_deaths` calls fail (`error()`, ActorDiedError by default) after
    `messages_before_death`."""

    def __init__(
        self,
        inner: LocalHandle,
        num_deaths: int,
        messages_before_death: int,
        error: Callable[[], BaseException] = ActorDiedError,
    ) -> None:
        super().__init__(inner._generate_batch, inner.channel_name)
        self.num_deaths = num_deaths
        self.messages_before_death = messages_before_death
        self.error = error
        self.resumed: list[BatchRequest] = []

    def remote(self, requests: list[BatchRequest], routing=None):
        self.resumed += [r for r in requests if r.output_ids]
        return super().remote(requests, routing)

    async def _named(self, stream):
        dies = self.num_deaths > 0
        self.num_deaths -= 1
        sent = 0
        async with aclosing(super()._named(stream)) as messages:
            async for message in messages:
                if dies and sent == self.messages_before_death:
                    raise self.error()  # closing the stream aborts the rest on the engine
                sent += 1
                yield message


def local_with_dying_replica(
    num_deaths: int,
    failover: dict | None = None,
    messages_before_death: int = 4,
    error: Callable[[], BaseException] = ActorDiedError,
) -> tuple:
    local = Local({"max_wait_ms": 500, "target_ttft_ms": 10_000, "max_batch_size": 8})
    local.batcher._failover = local.batcher._failover.model_copy(
        update={**FAST_FAILOVER, **(failover or {})}
    )
    dying = DyingReplica(local.to_replica, num_deaths, messages_before_death, error)
    local.batcher._replica = dying
    return local, dying


async def run_all(local: Local, params: list[SamplingParams]) -> list:
    async def one(index: int):
        tokens, counts = [], []
        async with aclosing(local.stream(index, params[index])) as stream:
            async for chunk in stream:
                tokens += chunk.token_ids
                counts.append(chunk.num_output_tokens)
        return tokens, counts

    for _ in range(12):
        local.batcher.policy.record_arrival()
    return await asyncio.gather(*(one(i) for i in range(len(params))), return_exceptions=True)


def expected(params: list[SamplingParams]) -> list[list[int]]:
    from serve_app.config import load_app_config

    engine = LLMEngine(load_app_config({"engine": ENGINE_ARGS}).engine)
    return engine.generate(PROMPTS[: len(params)], params)


def test_requests_continue_on_another_replica_with_identical_tokens():
    greedy = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    seeded = SamplingParams(
        max_tokens=16, temperature=1.0, seed=3, frequency_penalty=1.0, ignore_eos=True
    )
    params = [greedy, seeded, greedy, seeded]
    local, dying = local_with_dying_replica(num_deaths=2)
    results = asyncio.run(run_all(local, params))
    assert not [r for r in results if isinstance(r, BaseException)], results
    for (tokens, counts), want in zip(results, expected(params), strict=True):
        assert tokens == want  # no gap, no repeat, the same draws after the resume
        assert counts == sorted(set(counts)) and counts[-1] == 16  # counts only grow
    # Every request of the calls that died was resumed, from where it had got to.
    assert local.batcher.num_failovers >= 1 and len(dying.resumed) >= 1
    assert all(0 < len(r.output_ids) < 16 for r in dying.resumed)
    assert asyncio.run(local.batcher.live_requests()) == {}
    stats = local.replica.engine.stats()
    assert (stats.num_running, stats.num_used_kv_blocks) == (0, 0)  # nothing left behind
    local.replica.engine.shutdown()


def test_failover_off_or_exhausted_hands_the_failure_to_the_caller():
    params = [SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)] * 2
    local, _ = local_with_dying_replica(num_deaths=1, failover={"enabled": False})
    results = asyncio.run(run_all(local, params))
    assert all(isinstance(result, ActorDiedError) for result in results)
    local.replica.engine.shutdown()

    local, _ = local_with_dying_replica(num_deaths=10, failover={"max_attempts": 2})
    results = asyncio.run(run_all(local, params))
    assert all(isinstance(result, ActorDiedError) for result in results)
    assert local.batcher.num_failovers == 2 * len(params)
    local.replica.engine.shutdown()


def test_a_full_replica_queue_is_an_overload_retry_not_a_replica_death():
    """Serve's BackPressureError (every replica's queue full) is retried like a failure, but
    no replica failed: it counts as an `overloaded` retry, and the failover counters (which
    page ServeAppFailoverStorm) stay at 0. Before: a `replica_died` failover, and the
    retries counter was never set."""
    params = [SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)] * 2

    def full() -> BackPressureError:
        return BackPressureError(num_queued_requests=4, max_queued_requests=4)

    local, _ = local_with_dying_replica(num_deaths=1, messages_before_death=0, error=full)
    results = asyncio.run(run_all(local, params))
    assert [tokens for tokens, _ in results] == expected(params)
    stats = asyncio.run(local.batcher.stats())
    assert stats["failover_reasons"] == {} and stats["num_failovers"] == 0
    assert stats["retry_reasons"] == {"overloaded": len(params)}
    local.replica.engine.shutdown()


def test_only_replica_failures_are_retried_and_backoff_has_full_jitter():
    assert is_replica_failure(ActorDiedError())
    assert is_replica_failure(EngineDeadError("loop died"))
    assert not is_replica_failure(RequestError("bad prompt"))
    assert not is_replica_failure(ValueError("bad"))
    rng = random.Random(0)
    delays = [backoff_s(attempt, 0.2, 1.0, rng) for attempt in (1, 2, 3, 4, 5) for _ in range(50)]
    bounds = [0.2, 0.4, 0.8, 1.0, 1.0]
    for index, delay in enumerate(delays):
        assert 0.0 <= delay <= bounds[index // 50]
    assert max(delays[200:]) > 0.8  # the cap, not the doubling, bounds late attempts


@pytest.mark.parametrize("failover", [True, False])
def test_a_rejected_request_is_never_retried(failover):
    local = Local({"max_wait_ms": 500, "target_ttft_ms": 10_000})

    async def run():
        stream = local.streamer.stream([10**9], SamplingParams(max_tokens=2), "bad")
        with pytest.raises(RequestError):
            async for _ in stream:
                pass

    asyncio.run(run())
    assert local.batcher.num_failovers == 0
    local.replica.engine.shutdown()


class RoutedReplicas:
    """A handle over several local replicas, routed as Serve routes the model replicas: the
    app's DrainAwareRouter offers candidates for the call (its RoutingHint among the call's
    keyword arguments), the one with the shorter queue takes it (Serve's probe), and the
    router hears which replica accepted it (`on_request_routed`)."""

    def __init__(self, replicas: dict[str, LocalHandle], queue_lengths: dict[str, int]) -> None:
        self.replicas = replicas
        self.queue_lengths = queue_lengths
        self.candidates = [Replica(name, f"node-{name}") for name in replicas]
        self.router = router_seeing(draining={})
        self.routed: list[str] = []

    def options(self, **_) -> RoutedReplicas:
        return self

    def remote(self, requests: list[BatchRequest], **kwargs) -> _LocalResponses:
        return _LocalResponses(self._route_and_stream(requests, kwargs))

    async def _route_and_stream(self, requests, kwargs):
        metadata = RequestMetadata(request_id="call", internal_request_id="call")
        pending = PendingRequest(args=[requests], kwargs=kwargs, metadata=metadata)
        (offered,) = await self.router.choose_replicas(self.candidates, pending)
        chosen = min(offered, key=lambda replica: self.queue_lengths[replica.name])
        self.router.on_request_routed(pending, chosen.replica_id, None)
        self.routed.append(chosen.name)
        responses = self.replicas[chosen.name].remote(requests)
        async with aclosing(responses._stream):
            async for message in responses:
                yield message


def test_a_resume_avoids_the_replica_whose_dead_engine_failed_it():
    """Issue 26.2: an engine that died while its actor lives fails every call at once, and
    its replica, empty, is the one the two-choice router prefers. Before, every resume
    went back to it until max_attempts ran out (503); now a request's resumes avoid the
    replicas that failed it, so it finishes on the healthy one with fault-free tokens."""
    params = [SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)] * 2
    local = Local({"max_wait_ms": 500, "target_ttft_ms": 10_000, "max_batch_size": 8})
    local.batcher._failover = local.batcher._failover.model_copy(update=FAST_FAILOVER)
    dead = DyingReplica(
        local.to_replica, 10**6, 0, error=lambda: EngineDeadError("the engine loop failed")
    )
    routed = RoutedReplicas({"dead": dead, "healthy": local.to_replica}, {"dead": 0, "healthy": 3})
    local.batcher._replica = routed
    results = asyncio.run(run_all(local, params))
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert [tokens for tokens, _ in results] == expected(params)
    assert routed.routed.count("dead") == 1, routed.routed  # the first attempt only
    assert local.batcher.failover_reasons == {"replica_died": len(params)}
    local.replica.engine.shutdown()
