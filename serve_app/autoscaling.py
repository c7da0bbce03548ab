"""Autoscaling model replicas on engine load: what a replica reports, and Serve's policy.

Queue length alone is a poor signal for an LLM replica (output lengths vary), so each
replica reports what actually limits it: requests waiting in its engine, KV-cache usage and
the recent mean time to first token (`EngineLoadReporter`, returned from the replica's
`record_autoscaling_stats`, which Serve calls); calls queued at Serve's handles for want of
a replica (the batcher's, when every replica is at max_ongoing_requests) count as waiting.
Serve aggregates the reports per replica over `metrics_window_s` and calls
`EngineLoadPolicy` (Serve's custom-policy API: `autoscaling_config.policy`), whose pure core
is `decide_replicas`: scale up at once when any signal is over its target, in proportion to
the worst one; scale down one replica at a time, and only after the load has stayed low for
`downscale_after_s` (no queue, TTFT well under target, and the running requests and KV
usage would fit in one replica fewer); never below the on-demand floor. Serve then clamps
to min/max replicas; the Ray autoscaler adds or removes nodes to fit the replicas.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Serve's controller unpickles the policy: it need not import the engine
    from serve_app.config import AppConfig, AutoscalingSettings
    from serve_app.engine.engine import EngineStats
    from serve_app.messages import BatchMessage

WAITING = "engine_waiting_requests"
RUNNING = "engine_running_requests"
KV_CACHE_USAGE = "engine_kv_cache_usage"
RECENT_TTFT_S = "engine_recent_ttft_s"
LOW_LOAD_SINCE = "engine_load_low_since"  # key in Serve's per-deployment policy state
# Low load means every signal is below this share of its target on one replica fewer.
DOWNSCALE_HEADROOM = 0.7
MAX_UPSCALE_FACTOR = 4.0  # one decision at most quadruples the replicas


@dataclass(frozen=True)
class ReplicaLoad:
    """One replica's report, as `EngineLoadReporter.report` returns it."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0
    recent_ttft_s: float = 0.0

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> ReplicaLoad:
        return cls(
            waiting=metrics.get(WAITING, 0.0),
            running=metrics.get(RUNNING, 0.0),
            kv_cache_usage=metrics.get(KV_CACHE_USAGE, 0.0),
            recent_ttft_s=metrics.get(RECENT_TTFT_S, 0.0),
        )


@dataclass(frozen=True)
class LoadTargets:
    """What one replica should stay under; the policy's kwargs (JSON in Serve's config)."""

    waiting_requests: float = 2.0
    kv_cache_usage: float = 0.8
    ttft_s: float = 2.0
    max_running_requests: int = 128  # engine.max_num_seqs: a replica's running slots
    downscale_after_s: float = 120.0
    floor: int = 0  # replicas never removed (the on-demand floor)

    @classmethod
    def from_settings(
        cls, settings: AutoscalingSettings, max_running_requests: int, floor: int
    ) -> LoadTargets:
        return cls(
            waiting_requests=settings.target_waiting_requests,
            kv_cache_usage=settings.target_kv_cache_usage,
            ttft_s=settings.target_ttft_s,
            max_running_requests=max_running_requests,
            downscale_after_s=settings.downscale_after_s,
            floor=floor,
        )


@dataclass(frozen=True)
class Decision:
    num_replicas: int
    low_load_since: float | None  # when the load became low; None while it is not
    reason: str  # "up:<signal>", "down", "hold"


def load_pressure(
    loads: list[ReplicaLoad], targets: LoadTargets, queued_at_handles: float = 0.0
) -> dict[str, float]:
    """Each signal over its target, for the current replicas (1.0 = at target)."""
    count = len(loads)
    waiting = sum(load.waiting for load in loads) + queued_at_handles
    return {
        "queue": waiting / (targets.waiting_requests * count),
        "slots": sum(load.running for load in loads) / (targets.max_running_requests * count),
        "kv": sum(load.kv_cache_usage for load in loads) / (targets.kv_cache_usage * count),
        "ttft": max(load.recent_ttft_s for load in loads) / targets.ttft_s,
    }


def decide_replicas(
    loads: list[ReplicaLoad],
    current: int,
    targets: LoadTargets,
    low_load_since: float | None,
    now: float,
    queued_at_handles: float = 0.0,
) -> Decision:
    """How many replicas the reported load needs. Pure: the unit tests drive it directly."""
    if not loads:
        if current == 0 and queued_at_handles > 0:  # scaled to zero, and a request waits
            # As many as the queue wants, capped as a proportional step is (x4 of one).
            wanted = min(
                math.ceil(queued_at_handles / targets.waiting_requests), MAX_UPSCALE_FACTOR
            )
            return Decision(max(1, int(wanted), targets.floor), None, "up:queue")
        return Decision(max(current, targets.floor), low_load_since, "hold")  # starting
    pressure = load_pressure(loads, targets, queued_at_handles)
    # Full running slots alone are no reason to grow: a replica at max_num_seqs queues the
    # rest, which the queue signal sees; they only stop a downscale.
    signal, worst = max(
        ((name, value) for name, value in pressure.items() if name != "slots"),
        key=lambda item: item[1],
    )
    if worst > 1.0:
        grown = math.ceil(current * min(worst, MAX_UPSCALE_FACTOR))
        return Decision(max(grown, current + 1, targets.floor), None, f"up:{signal}")
    if not _fits_in_one_fewer(loads, targets, pressure):
        return Decision(max(current, targets.floor), None, "hold")
    since = now if low_load_since is None else low_load_since
    if now - since < targets.downscale_after_s or current <= targets.floor:
        return Decision(max(current, targets.floor), since, "hold")
    # One replica per period: the next one goes only after another full period of low load.
    return Decision(max(current - 1, targets.floor), now, "down")


def _fits_in_one_fewer(
    loads: list[ReplicaLoad], targets: LoadTargets, pressure: dict[str, float]
) -> bool:
    """Whether the same work spread over one replica fewer stays well under the targets."""
    if pressure["queue"] > 0 or pressure["ttft"] > DOWNSCALE_HEADROOM:
        return False
    count = len(loads)
    if count <= 1:  # down to zero: only when nothing runs at all
        return all(load.running == 0 for load in loads)
    spread = max(pressure["kv"], pressure["slots"]) * count / (count - 1)
    return spread <= DOWNSCALE_HEADROOM


class EngineLoadPolicy:
    """Serve's custom autoscaling policy (a class: Serve builds it once with policy_kwargs)."""

    def __init__(self, **targets: Any) -> None:
        self.targets = LoadTargets(**targets)

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        """`ctx` is Serve's AutoscalingContext: per-replica means of our reported metrics."""
        metrics = ctx.aggregated_metrics or {}
        loads = [
            ReplicaLoad.from_metrics(
                {name: values[replica] for name, values in metrics.items() if replica in values}
            )
            for replica in ctx.running_replicas
            if all(replica in metrics.get(name, {}) for name in (WAITING, KV_CACHE_USAGE))
        ]
        now = ctx.current_time if ctx.current_time is not None else time.time()
        state = dict(ctx.policy_state)
        decision = decide_replicas(
            loads,
            ctx.target_num_replicas,
            self.targets,
            state.get(LOW_LOAD_SINCE),
            now,
            queued_at_handles=ctx.total_queued_requests or 0.0,
        )
        state[LOW_LOAD_SINCE] = decision.low_load_since
        return decision.num_replicas, state


def autoscaling_config(config: AppConfig) -> dict[str, Any]:
    """Serve's `autoscaling_config` for the model replicas, from `replica.autoscaling`."""
    settings = config.replica.autoscaling
    assert settings is not None
    floor = config.placement.on_demand_floor if config.placement.enabled else 0
    options: dict[str, Any] = {
        "min_replicas": max(settings.min_replicas, floor),
        "max_replicas": max(settings.max_replicas, floor),
        "target_ongoing_requests": settings.target_ongoing_requests,
        "look_back_period_s": settings.metrics_window_s,
        # How often replicas and handles push their load (Serve's default: 10 s, which
        # delays every decision that long). Ray 2.60 reads only this option: the
        # RAY_SERVE_*_AUTOSCALING_METRIC_PUSH_INTERVAL_S variables are defined but unused.
        # Serve wants it below the look-back window.
        "metrics_interval_s": min(2.0, settings.metrics_window_s / 6),
    }
    if settings.policy == "engine_load":
        # The policy holds its own low-load period; Serve's delays would only add to it.
        options["upscale_delay_s"] = 0.0
        options["downscale_delay_s"] = 0.0
        options["policy"] = {
            "policy_function": f"{__name__}:{EngineLoadPolicy.__name__}",
            "policy_kwargs": asdict(
                LoadTargets.from_settings(settings, config.engine.max_num_seqs, floor)
            ),
        }
    return options


class EngineLoadReporter:
    """A replica's side: times first tokens and turns engine stats into Serve metrics."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._ttfts: deque[tuple[float, float]] = deque()  # (when, seconds to first token)

    def observe_ttft(self, seconds: float, now: float | None = None) -> None:
        self._ttfts.append((time.monotonic() if now is None else now, seconds))

    def recent_ttft_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._ttfts and now - self._ttfts[0][0] > self.window_s:
            self._ttfts.popleft()
        return sum(ttft for _, ttft in self._ttfts) / len(self._ttfts) if self._ttfts else 0.0

    def report(self, stats: EngineStats) -> dict[str, float]:
        return {
            WAITING: float(stats.num_waiting),
            RUNNING: float(stats.num_running),
            KV_CACHE_USAGE: float(stats.kv_cache_usage),
            RECENT_TTFT_S: self.recent_ttft_s(),
        }

    async def timed_batch(
        self, messages: AsyncIterator[BatchMessage], request_ids: Iterable[str]
    ) -> AsyncIterator[BatchMessage]:
        """`messages` unchanged; each request's time to its first token is recorded."""
        started = time.monotonic()
        pending = set(request_ids)
        async with aclosing(messages):
            async for message in messages:
                for tagged in message.chunks if pending else ():
                    if tagged.request_id in pending and tagged.chunk and tagged.chunk.token_ids:
                        pending.discard(tagged.request_id)
                        self.observe_ttft(time.monotonic() - started)
                yield message
