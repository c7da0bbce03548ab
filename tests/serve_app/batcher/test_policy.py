"""The adaptive batch policy under simulated time: light load, bursts, the TTFT bound, reconfigure.

A small discrete-event simulation plays the batcher's part: on every arrival, and when a
wait the policy asked for runs out, it asks `decide()` and forwards what it is told to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from serve_app.batcher.policy import (
    AdaptiveBatchPolicy,
    BatchPolicyConfig,
    BatchPolicyConfigError,
)


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Trace:
    batch_sizes: list[int] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    waits_s: list[float] = field(default_factory=list)  # per request: arrival -> forwarded
    max_window_overrun_s: float = 0.0  # how far a requested wait reached past the window


def simulate(policy: AdaptiveBatchPolicy, clock: SimulatedClock, arrivals: list[float]) -> Trace:
    """Drive the policy through the arrival times; every request is forwarded by the end."""
    trace = Trace()
    queue: list[float] = []
    deadline: float | None = None
    index = 0
    while index < len(arrivals) or queue:
        next_arrival = arrivals[index] if index < len(arrivals) else float("inf")
        if deadline is not None and deadline < next_arrival:
            clock.now = deadline
        else:
            clock.now = next_arrival
            policy.record_arrival()
            queue.append(next_arrival)
            index += 1
        deadline = None
        while queue:
            decision = policy.decide(len(queue), clock.now - queue[0])
            if not decision.flush:
                assert decision.wait_s is not None and decision.wait_s > 0
                deadline = clock.now + decision.wait_s
                overrun = (deadline - queue[0]) - policy.window_s()
                trace.max_window_overrun_s = max(trace.max_window_overrun_s, overrun)
                break
            batch, queue = queue[: decision.batch_size], queue[decision.batch_size :]
            trace.batch_sizes.append(len(batch))
            trace.batch_times.append(clock.now)
            trace.waits_s.extend(clock.now - arrival for arrival in batch)
    return trace


def poisson_arrivals(rate_per_s: float, count: int, seed: int, start_s: float = 0.0) -> list[float]:
    rng = random.Random(seed)
    times, now = [], start_s
    for _ in range(count):
        now += rng.expovariate(rate_per_s)
        times.append(now)
    return times


def test_light_load_adds_under_2ms_of_wait() -> None:
    clock = SimulatedClock()
    policy = AdaptiveBatchPolicy(BatchPolicyConfig(max_wait_ms=10.0), clock)
    arrivals = poisson_arrivals(rate_per_s=20.0, count=2000, seed=0)  # 100 s of traffic
    trace = simulate(policy, clock, arrivals)
    assert len(trace.waits_s) == 2000
    assert max(trace.waits_s) < 0.002
    assert max(trace.batch_sizes) <= 2


def test_batches_grow_under_a_burst() -> None:
    clock = SimulatedClock()
    config = BatchPolicyConfig(max_wait_ms=10.0, max_batch_size=32, target_ttft_ms=500.0)
    policy = AdaptiveBatchPolicy(config, clock)
    light = poisson_arrivals(rate_per_s=10.0, count=20, seed=1)
    burst = poisson_arrivals(rate_per_s=5000.0, count=2000, seed=2, start_s=light[-1] + 0.5)
    trace = simulate(policy, clock, light + burst)

    timed = zip(trace.batch_sizes, trace.batch_times, strict=True)
    in_burst = [size for size, time_s in timed if time_s >= burst[0]]
    assert trace.batch_sizes[: len(trace.batch_sizes) - len(in_burst)] == [1] * 20
    first, last = in_burst[:5], in_burst[-21:-1]  # the very last batch is the tail
    assert sum(last) / len(last) > 4 * sum(first) / len(first)
    assert min(last) == 32  # 5000/s over a 10 ms window would fill 51: capped at 32
    assert max(in_burst) == 32  # never above max_batch_size
    assert sum(in_burst) == 2000
    assert max(trace.waits_s) <= 0.010 + 1e-9


def test_window_never_exceeds_what_the_ttft_target_allows() -> None:
    clock = SimulatedClock()
    config = BatchPolicyConfig(target_ttft_ms=30.0, max_wait_ms=50.0, max_batch_size=64)
    policy = AdaptiveBatchPolicy(config, clock)
    policy.record_forward_latency(0.025)  # the replica takes 25 ms to a first token
    assert policy.window_s() == pytest.approx(0.005)

    trace = simulate(policy, clock, poisson_arrivals(rate_per_s=3000.0, count=1000, seed=3))
    assert max(trace.waits_s) <= 0.005 + 1e-9
    assert max(trace.waits_s) > 0.003  # the burst did use the window it had
    assert trace.max_window_overrun_s <= 1e-9

    for _ in range(30):  # the replica slowed down past the target: no wait at all
        policy.record_forward_latency(0.040)
    assert policy.window_s() == 0.0
    start = clock.now + 1.0
    trace = simulate(policy, clock, poisson_arrivals(3000.0, 300, seed=4, start_s=start))
    assert max(trace.waits_s) == 0.0


def test_reconfigure_changes_behaviour_live() -> None:
    clock = SimulatedClock()
    policy = AdaptiveBatchPolicy(BatchPolicyConfig(max_batch_size=32, max_wait_ms=10.0), clock)
    first = simulate(policy, clock, poisson_arrivals(5000.0, 1000, seed=5))
    assert max(first.batch_sizes) == 32

    policy.reconfigure({"max_batch_size": 4, "max_wait_ms": 2.0})
    assert policy.config == BatchPolicyConfig(max_batch_size=4, max_wait_ms=2.0)
    second = simulate(policy, clock, poisson_arrivals(5000.0, 1000, seed=6, start_s=clock.now))
    assert max(second.batch_sizes) == 4
    assert max(second.waits_s) <= 0.002 + 1e-9

    policy.reconfigure(BatchPolicyConfig(max_wait_ms=0.0))  # batching window off
    third = simulate(policy, clock, poisson_arrivals(5000.0, 500, seed=7, start_s=clock.now))
    assert third.batch_sizes == [1] * 500
    assert max(third.waits_s) == 0.0


@pytest.mark.parametrize(
    ("user_config", "field_name"),
    [
        ({"target_ttft_ms": 0}, "target_ttft_ms"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 2.5}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
        ({"smoothing": 1.5}, "smoothing"),
        ({"max_wait": 5}, "max_wait"),
        ({"max_wait_ms": True}, "max_wait_ms"),  # YAML's true is no number
        ({"max_wait_ms": None}, "max_wait_ms"),
        ({"target_ttft_ms": float("inf")}, "target_ttft_ms"),
        ({"smoothing": float("nan")}, "smoothing"),
    ],
)
def test_invalid_knobs_name_the_field(user_config: dict, field_name: str) -> None:
    policy = AdaptiveBatchPolicy(BatchPolicyConfig())
    with pytest.raises(BatchPolicyConfigError, match=field_name):
        policy.reconfigure(user_config)
    assert policy.config == BatchPolicyConfig()  # a rejected config leaves the old one


def test_a_typo_names_the_field_and_the_allowed_ones() -> None:
    with pytest.raises(BatchPolicyConfigError) as raised:
        BatchPolicyConfig.from_user_config({"target_ttft_ms": 200, "max_wiat_ms": 10})
    assert str(raised.value) == (
        "unknown field 'max_wiat_ms' "
        "(allowed: max_batch_size, max_wait_ms, smoothing, target_ttft_ms)"
    )


def test_every_bad_knob_is_named_with_its_range() -> None:
    with pytest.raises(BatchPolicyConfigError) as raised:
        BatchPolicyConfig.from_user_config({"max_batch_size": 0, "smoothing": 2})
    assert str(raised.value).split("; ") == [
        "max_batch_size: Input should be greater than or equal to 1, got 0 "
        "(allowed: an int in [1, 4096])",
        "smoothing: Input should be less than or equal to 1, got 2 (allowed: a number in (0, 1])",
    ]


def test_a_user_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(BatchPolicyConfigError, match=r"a mapping of target_ttft_ms, .* got \[5\]"):
        BatchPolicyConfig.from_user_config([5])  # type: ignore[arg-type]


def test_absent_knobs_keep_their_defaults_and_numbers_from_the_command_line_parse() -> None:
    config = BatchPolicyConfig.from_user_config({"max_wait_ms": "5", "max_batch_size": 8.0})
    assert config.to_dict() == {
        "target_ttft_ms": 200.0,
        "max_batch_size": 8,
        "max_wait_ms": 5.0,
        "smoothing": 0.2,
    }


def test_forward_latency_is_smoothed() -> None:
    policy = AdaptiveBatchPolicy(BatchPolicyConfig(smoothing=0.5, target_ttft_ms=1000.0))
    policy.record_forward_latency(0.100)
    policy.record_forward_latency(0.200)
    assert policy.snapshot().forward_latency_s == pytest.approx(0.150)
    with pytest.raises(ValueError, match="forward latency"):
        policy.record_forward_latency(float("nan"))
