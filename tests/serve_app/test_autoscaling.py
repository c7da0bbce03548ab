"""The engine-load autoscaling policy on synthetic reports: up on queueing, KV pressure or a
TTFT breach; down one replica per period of sustained low load; never below the floor. Also
what a replica reports, and that Serve's own AutoscalingConfig accepts and loads the policy."""

from __future__ import annotations

import asyncio

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serve_app.autoscaling import (
    KV_CACHE_USAGE,
    LOW_LOAD_SINCE,
    RECENT_TTFT_S,
    RUNNING,
    WAITING,
    EngineLoadPolicy,
    EngineLoadReporter,
    LoadTargets,
    ReplicaLoad,
    autoscaling_config,
    decide_replicas,
)
from serve_app.config import load_app_config
from serve_app.engine.engine import EngineStats
from serve_app.messages import BatchMessage, TaggedChunk, TokenChunk

TARGETS = LoadTargets(
    waiting_requests=2,
    kv_cache_usage=0.8,
    ttft_s=1.0,
    max_running_requests=8,
    downscale_after_s=60,
    floor=0,
)
IDLE = ReplicaLoad(waiting=0, running=1, kv_cache_usage=0.1, recent_ttft_s=0.1)


def test_queueing_scales_up_in_proportion_at_once():
    loads = [ReplicaLoad(waiting=6, running=8, kv_cache_usage=0.5)] * 2  # 3x the target
    decision = decide_replicas(loads, 2, TARGETS, None, now=0.0)
    assert (decision.num_replicas, decision.reason) == (6, "up:queue")


def test_calls_queued_at_the_handles_count_as_waiting():
    loads = [ReplicaLoad(running=8, kv_cache_usage=0.5)] * 2  # nothing waits in the engines
    decision = decide_replicas(loads, 2, TARGETS, None, now=0.0, queued_at_handles=8)
    assert (decision.num_replicas, decision.reason) == (4, "up:queue")


def test_full_running_slots_stop_a_downscale_but_do_not_grow():
    loads = [ReplicaLoad(running=8, kv_cache_usage=0.1, recent_ttft_s=0.1)] * 2
    decision = decide_replicas(loads, 2, TARGETS, low_load_since=0.0, now=1000.0)
    assert (decision.num_replicas, decision.reason, decision.low_load_since) == (2, "hold", None)


def test_kv_pressure_scales_up_by_at_least_one():
    loads = [ReplicaLoad(running=4, kv_cache_usage=0.9)]
    decision = decide_replicas(loads, 1, TARGETS, None, now=0.0)
    assert (decision.num_replicas, decision.reason) == (2, "up:kv")


def test_a_ttft_breach_on_one_replica_scales_up():
    loads = [IDLE, ReplicaLoad(running=2, kv_cache_usage=0.2, recent_ttft_s=1.5)]
    decision = decide_replicas(loads, 2, TARGETS, None, now=0.0)
    assert (decision.num_replicas, decision.reason) == (3, "up:ttft")


def test_one_decision_at_most_quadruples():
    loads = [ReplicaLoad(waiting=100)]
    assert decide_replicas(loads, 1, TARGETS, None, now=0.0).num_replicas == 4


def test_downscale_only_after_sustained_low_load_one_replica_per_period():
    loads = [IDLE] * 3
    first = decide_replicas(loads, 3, TARGETS, None, now=100.0)
    assert (first.num_replicas, first.low_load_since) == (3, 100.0)
    held = decide_replicas(loads, 3, TARGETS, first.low_load_since, now=159.0)
    assert (held.num_replicas, held.reason) == (3, "hold")
    down = decide_replicas(loads, 3, TARGETS, held.low_load_since, now=160.0)
    assert (down.num_replicas, down.reason, down.low_load_since) == (2, "down", 160.0)
    # The next replica waits for a whole new period.
    again = decide_replicas(loads[:2], 2, TARGETS, down.low_load_since, now=200.0)
    assert again.num_replicas == 2


def test_load_in_the_middle_of_the_period_restarts_it():
    busy = [ReplicaLoad(waiting=1, running=8, kv_cache_usage=0.5)] * 2
    decision = decide_replicas(busy, 2, TARGETS, low_load_since=0.0, now=59.0)
    assert (decision.num_replicas, decision.low_load_since) == (2, None)


def test_no_downscale_when_one_replica_fewer_would_be_over_the_headroom():
    loads = [ReplicaLoad(running=6, kv_cache_usage=0.45)] * 2  # 0.9 of target on one replica
    decision = decide_replicas(loads, 2, TARGETS, low_load_since=0.0, now=1000.0)
    assert (decision.num_replicas, decision.low_load_since) == (2, None)


@pytest.mark.parametrize("current", [1, 2, 3])
def test_never_below_the_floor(current):
    floor = LoadTargets(downscale_after_s=0, floor=2)
    idle = [ReplicaLoad()] * current
    assert decide_replicas(idle, current, floor, 0.0, now=1e6).num_replicas >= 2
    assert decide_replicas([], current, floor, None, now=1e6).num_replicas >= 2


def test_scale_to_zero_only_when_nothing_runs():
    assert decide_replicas([ReplicaLoad()], 1, TARGETS, 0.0, now=61.0).num_replicas == 0
    assert decide_replicas([IDLE], 1, TARGETS, 0.0, now=61.0).num_replicas == 1


def test_no_reports_yet_holds():
    assert decide_replicas([], 3, TARGETS, None, now=0.0).reason == "hold"
    assert decide_replicas([], 3, TARGETS, None, now=0.0, queued_at_handles=9).reason == "hold"


def test_a_request_waiting_at_zero_replicas_scales_up_from_zero():
    """At zero replicas nothing reports; a call queued at the handles must bring one up
    (before: the policy held at 0, and only Serve's own cold-start path rescued it)."""
    assert decide_replicas([], 0, TARGETS, None, now=0.0).num_replicas == 0
    up = decide_replicas([], 0, TARGETS, 5.0, now=0.0, queued_at_handles=1)
    assert (up.num_replicas, up.reason, up.low_load_since) == (1, "up:queue", None)
    assert decide_replicas([], 0, TARGETS, None, now=0.0, queued_at_handles=50).num_replicas == 4
    policy = EngineLoadPolicy(waiting_requests=2)
    assert policy(_context({}, 0, {}, queued=1.0))[0] == 1  # Serve's own context type


def _context(
    metrics: dict[str, list[float]], target: int, policy_state: dict, queued: float = 0.0
) -> object:
    deployment = DeploymentID(name="ModelReplica", app_name="llm")
    replicas = [ReplicaID(f"r{index}", deployment) for index in range(target)]
    return AutoscalingContext(
        deployment_id=deployment,
        deployment_name="ModelReplica",
        app_name="llm",
        current_num_replicas=target,
        target_num_replicas=target,
        running_replicas=replicas,
        total_num_requests=0.0,
        total_queued_requests=queued,
        aggregated_metrics={
            name: dict(zip(replicas, values, strict=True)) for name, values in metrics.items()
        },
        raw_metrics={},
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=10,
        policy_state=policy_state,
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=1000.0,
        config=None,
    )


def test_the_serve_policy_reads_serves_aggregated_replica_metrics():
    policy = EngineLoadPolicy(waiting_requests=2, kv_cache_usage=0.8, ttft_s=1.0)
    busy = {WAITING: [5.0, 3.0], RUNNING: [8, 8], KV_CACHE_USAGE: [0.5, 0.5], RECENT_TTFT_S: [0, 0]}
    num_replicas, state = policy(_context(busy, 2, {}))
    assert num_replicas == 4 and state[LOW_LOAD_SINCE] is None
    idle = {WAITING: [0.0], RUNNING: [0.0], KV_CACHE_USAGE: [0.0], RECENT_TTFT_S: [0.0]}
    num_replicas, state = policy(_context(idle, 1, {"serve_internal": 1}))
    assert num_replicas == 1 and state == {"serve_internal": 1, LOW_LOAD_SINCE: 1000.0}
    num_replicas, _ = policy(_context(idle, 1, {}, queued=3.0))  # the batcher's calls wait
    assert num_replicas == 2


def test_a_replica_missing_some_metrics_is_read_with_what_it_sent():
    policy = EngineLoadPolicy(waiting_requests=2)
    metrics = {WAITING: [6.0, 6.0], KV_CACHE_USAGE: [0.1, 0.1], RUNNING: [2.0, 2.0]}
    context = _context(metrics, 2, {})
    second = context.running_replicas[1]
    del context.aggregated_metrics[RUNNING][second]  # its RUNNING report has not arrived
    assert policy(context)[0] == 6


def test_serve_accepts_the_derived_autoscaling_config_and_loads_the_policy():
    config = load_app_config(
        {
            "replica": {"autoscaling": {"min_replicas": 0, "max_replicas": 4}},
            "placement": {"enabled": True, "on_demand_floor": 2},
        }
    )
    options = autoscaling_config(config)
    assert options["min_replicas"] == 2  # the on-demand floor raises Serve's minimum
    serve_config = AutoscalingConfig(**options)
    policy = serve_config.policy.get_policy()(**serve_config.policy.policy_kwargs)
    assert isinstance(policy, EngineLoadPolicy) and policy.targets.floor == 2


def test_replicas_push_their_load_often_enough_for_the_window():
    """Serve's default push interval is 10 s, and Ray 2.60 ignores the environment variables
    the cluster YAMLs once set for it: every scaling decision waited up to 10 s."""
    config = load_app_config({"replica": {"autoscaling": {"min_replicas": 1}}})
    options = AutoscalingConfig(**autoscaling_config(config))
    assert 0 < options.metrics_interval_s <= 2.0
    assert options.metrics_interval_s < options.look_back_period_s


def test_serves_own_policy_stays_available():
    config = load_app_config({"replica.autoscaling.policy": "ongoing_requests"})
    options = AutoscalingConfig(**autoscaling_config(config))
    assert options.policy.is_default_policy_function()


def test_reporter_turns_engine_stats_and_recent_ttfts_into_metrics():
    reporter = EngineLoadReporter(window_s=10)
    reporter.observe_ttft(0.2, now=0.0)
    reporter.observe_ttft(0.4, now=5.0)
    assert reporter.recent_ttft_s(now=9.0) == pytest.approx(0.3)
    assert reporter.recent_ttft_s(now=12.0) == pytest.approx(0.4)  # the first aged out
    stats = EngineStats(2, 3, 100, 40, 0.4, 0.0, 0)
    report = reporter.report(stats)
    assert (report[WAITING], report[RUNNING], report[KV_CACHE_USAGE]) == (3.0, 2.0, 0.4)


def test_reporter_times_the_first_token_of_each_request_of_a_batch():
    reporter = EngineLoadReporter()

    async def batch():
        await asyncio.sleep(0.05)
        yield BatchMessage([TaggedChunk("a", TokenChunk([1], False, None, 3, 1))])
        yield BatchMessage(
            [
                TaggedChunk("a", TokenChunk([2], True, "stop", 3, 2)),
                TaggedChunk("c", TokenChunk([5], False, None, 3, 1)),
            ]
        )

    async def drain() -> None:
        assert len([m async for m in reporter.timed_batch(batch(), ["a", "b", "c"])]) == 2

    asyncio.run(drain())
    assert len(reporter._ttfts) == 2  # one per request's first token; "b" never started
    assert 0.04 < reporter.recent_ttft_s() < 1.0


@pytest.mark.slow
@pytest.mark.ray
def test_a_live_replica_reports_its_engine_load_to_serve(replica_handle, client):
    client.completions.create(model="tiny", prompt="hello", max_tokens=4)  # one TTFT sample
    report = replica_handle.record_autoscaling_stats.remote().result(timeout_s=60)
    assert set(report) == {WAITING, RUNNING, KV_CACHE_USAGE, RECENT_TTFT_S}
    assert all(isinstance(value, float) for value in report.values())
    assert 0.0 < report[RECENT_TTFT_S] < 30.0
