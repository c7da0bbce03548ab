"""Admission: the bound is the replicas' running capacity plus a queue sized from the measured
finish rate (kept within its floor and cap), shared over ingress replicas; beyond it a
request gets 429 + Retry-After at once, and a finished request frees its place."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import yaml

from serve_app.config import load_app_config
from serve_app.engine.sampling_params import SamplingParams
from serve_app.ingress.admission import RATE_WINDOW_S, Admission, AdmittedTokenStreamer
from serve_app.ingress.errors import APIError
from serve_app.messages import TokenChunk

GPU_SPOT = Path(__file__).parents[3] / "deployments" / "gpu-spot.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock | None = None, **args) -> Admission:
    return Admission(load_app_config(args), clock or Clock())


def test_default_bound_is_running_capacity_plus_the_queue_floor():
    assert admission().bound() == 128 + 128  # engine.max_num_seqs 128 x 1 replica + floor
    config = {"engine": {"max_num_seqs": 16}, "replica": {"num_replicas": 3}}
    assert admission(**config).bound() == 16 * 3 + 128


def test_queue_grows_with_the_measured_finish_rate_up_to_its_cap():
    clock = Clock()
    gate = admission(clock, admission={"max_queue_wait_s": 10, "max_queued_requests": 300})
    for _ in range(int(RATE_WINDOW_S) * 20):  # 20 requests finished per second
        assert gate.try_admit()
        gate.release()
    assert gate.bound() == 128 + 200  # 20/s x 10 s
    for _ in range(int(RATE_WINDOW_S) * 20):
        gate.try_admit()
        gate.release()
    assert gate.bound() == 128 + 300  # capped
    clock.now += RATE_WINDOW_S + 1  # the finishes age out: back to the floor
    assert gate.bound() == 128 + 128


def test_each_ingress_replica_holds_its_share_and_a_fixed_bound_wins():
    assert admission(ingress={"num_replicas": 2}).bound() == 64 + 64
    assert admission(admission={"max_requests": 7}).bound() == 7
    assert admission(admission={"max_requests": 7}, ingress={"num_replicas": 2}).bound() == 4


def test_the_bound_follows_the_replicas_serving_and_counts_at_least_one():
    """deployments/gpu-spot.yaml: 64 sequences per replica, up to 12 replicas, 2 ingress
    replicas. With 1 replica serving, an ingress holds its share of one replica's 64 plus
    the queue floor scaled to 1/12 of the app, not the ~450 of all 12 replicas."""
    args = yaml.safe_load(GPU_SPOT.read_text())["applications"][0]["args"]
    serving = [1]
    gate = Admission(load_app_config(args), Clock(), serving_replicas=lambda: serving[0])
    assert gate.max_replicas == 12
    assert gate.bound() == 64 // 2 + math.ceil(128 / 12 / 2)  # 32 + 6
    for _ in range(gate.bound()):
        assert gate.try_admit()
    assert not gate.try_admit()  # the 429 fires
    serving[0] = 6
    assert gate.bound() == 64 * 6 // 2 + 128 * 6 // 12 // 2
    assert gate.try_admit()  # more replicas: room again
    serving[0] = 12
    assert gate.bound() == 64 * 12 // 2 + 128 // 2  # the full app, as before
    serving[0] = 0  # none known to serve (a cold start, an outage): one replica's worth
    assert gate.bound() == 32 + 6
    serving[0] = 15  # more than max_replicas (a rolling update): Serve's ceiling
    assert gate.bound() == 64 * 12 // 2 + 128 // 2


def test_bad_admission_settings_name_the_field():
    with pytest.raises(ValueError, match=r"min_queued_requests .* must be <= max_queued"):
        load_app_config({"admission": {"min_queued_requests": 10, "max_queued_requests": 5}})


class Tokens:
    """A TokenStreamer of one token per request, finishing at once."""

    async def stream(self, prompt_ids, params, request_id):
        yield TokenChunk([1], True, "length", len(prompt_ids), 1)


def test_a_full_ingress_answers_429_with_retry_after_and_frees_places_on_finish():
    gate = admission(admission={"max_requests": 2})
    streamer = AdmittedTokenStreamer(Tokens(), gate, retry_after_s=3)
    params = SamplingParams(max_tokens=1)

    async def run():
        held = [streamer.stream([1], params, f"r{i}") for i in range(2)]
        assert [chunk.finished for chunk in [await anext(s) for s in held]] == [True, True]
        assert gate.num_held == 2
        with pytest.raises(APIError) as refused:
            await anext(streamer.stream([1], params, "r2"))
        for stream in held:
            await stream.aclose()
        assert gate.num_held == 0
        assert [c.token_ids async for c in streamer.stream([1], params, "r3")] == [[1]]
        return refused.value

    error = asyncio.run(run())
    assert error.status == 429 and error.headers == {"Retry-After": "3"}
    assert "limit" in error.message
