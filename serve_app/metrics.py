"""Every Prometheus metric of the app, defined once: `METRICS` is the list dashboards and
alerts are generated from (dashboards/), the classes below record them.

Deployments record through Ray Serve's metrics API (`ray.serve.metrics`: Serve adds the
deployment, replica and application tags, Ray's agent the node and session tags and the
`ray_` prefix), so they aggregate with Serve's own metrics: Prometheus sees
`ray_serve_app_requests_total` (counters gain `_total`, histograms `_bucket`/`_sum`/`_count`).
Standalone processes (the spot preemption watcher) record with prometheus-client instead and
keep the bare name. `MetricSpec.series` is the name queries use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ray.serve import metrics as serve_metrics
from ray.util import metrics as ray_metrics

if TYPE_CHECKING:
    from serve_app.engine.engine import EngineStats
    from serve_app.request_log import RequestTrace

RAY_PREFIX = "ray_"  # what Ray's exporter puts before every name
GAUGE_PERIOD_S = 1.0  # how often gauges are set again

LATENCY_BOUNDARIES_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
FIRST_TOKEN_BOUNDARIES_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_GAP_BOUNDARIES_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2)
TOKEN_GAP_BOUNDARIES_S += (0.3, 0.5, 1, 2.5)
BATCH_SIZE_BOUNDARIES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUEUE_WAIT_BOUNDARIES_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)

# Label values of the rare-event counters, created at 0 so a series exists before the
# first event (Prometheus' advice: rate() then sees that first increment too).
FAILOVER_REASONS = ("replica_died", "node_drained")
RETRY_REASONS = ("overloaded", "unavailable")
TOKEN_KINDS = ("prompt", "completion")
# Outcomes the alerts watch, created at 0 for a route when it first sees a request:
# (status, code) as REQUESTS records them.
ALERTED_OUTCOMES = (
    ("200", "none"),
    ("429", "overloaded"),
    ("499", "client_disconnected"),
    ("500", "internal_error"),
    ("503", "unavailable"),
)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as recorded; see `series` for what Prometheus stores
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    exporter: Literal["ray", "prometheus_client"] = "ray"

    def series(self, suffix: str = "") -> str:
        """The name in Prometheus; `suffix` is `_bucket`, `_sum` or `_count` of a histogram."""
        prefix = RAY_PREFIX if self.exporter == "ray" else ""
        return prefix + self.name + ("_total" if self.kind == "counter" else "") + suffix

    def create_ray(self) -> ray_metrics.Metric:
        """Serve's flavour inside a replica: it adds the deployment, replica and application
        tags (dashboards group by them)."""
        kwargs = {"description": self.description, "tag_keys": self.labels}
        if self.kind == "counter":
            return serve_metrics.Counter(self.name, **kwargs)
        if self.kind == "gauge":
            return serve_metrics.Gauge(self.name, **kwargs)
        return serve_metrics.Histogram(self.name, boundaries=list(self.boundaries), **kwargs)


def _spec(*args, **kwargs) -> MetricSpec:
    spec = MetricSpec(*args, **kwargs)
    METRICS.append(spec)
    return spec


METRICS: list[MetricSpec] = []
# ---- ingress: one observation per finished request ------------------------------------
REQUESTS = _spec(
    "serve_app_requests",
    "counter",
    "finished requests by route, HTTP status (gRPC: its HTTP equivalent; 499: the client "
    "left) and error code (none on success)",
    ("route", "status", "code"),
)
TIME_TO_FIRST_TOKEN_S = _spec(
    "serve_app_time_to_first_token_s",
    "histogram",
    "seconds from arrival at the ingress to the first output token",
    ("route",),
    FIRST_TOKEN_BOUNDARIES_S,
)
TIME_PER_OUTPUT_TOKEN_S = _spec(
    "serve_app_time_per_output_token_s",
    "histogram",
    "per request: seconds from the first to the last token over the tokens after the first",
    ("route",),
    TOKEN_GAP_BOUNDARIES_S,
)
INTER_TOKEN_LATENCY_S = _spec(
    "serve_app_inter_token_latency_s",
    "histogram",
    "seconds between consecutive streamed outputs of one choice, as the ingress got them",
    ("route",),
    TOKEN_GAP_BOUNDARIES_S,
)
REQUEST_LATENCY_S = _spec(
    "serve_app_request_latency_s",
    "histogram",
    "end-to-end seconds from arrival at the ingress to the last byte",
    ("route",),
    LATENCY_BOUNDARIES_S,
)
TOKENS = _spec("serve_app_tokens", "counter", "prompt and completion tokens", ("kind",))
# ---- batcher --------------------------------------------------------------------------
BATCH_SIZE = _spec(
    "serve_app_batch_size",
    "histogram",
    "requests forwarded to a model replica in one call",
    boundaries=BATCH_SIZE_BOUNDARIES,
)
BATCH_QUEUE_WAIT_S = _spec(
    "serve_app_batch_queue_wait_s",
    "histogram",
    "seconds a request waited in the batcher before it was forwarded",
    boundaries=QUEUE_WAIT_BOUNDARIES_S,
)
BATCHER_QUEUED_REQUESTS = _spec(
    "serve_app_batcher_queued_requests", "gauge", "requests waiting in the batcher's queue"
)
BATCH_WINDOW_S = _spec(
    "serve_app_batch_window_s", "gauge", "the adaptive policy's current batching window"
)
FAILOVERS = _spec(
    "serve_app_failovers",
    "counter",
    "live requests resubmitted to another replica, by why their replica was left",
    ("reason",),
)
RETRIES = _spec(
    "serve_app_retries", "counter", "replica calls the batcher retried, by cause", ("reason",)
)
# ---- model replica (engine counters, read once per period) ----------------------------
RUNNING_REQUESTS = _spec("serve_app_running_requests", "gauge", "requests the engine runs")
WAITING_REQUESTS = _spec(
    "serve_app_waiting_requests", "gauge", "requests in the engine waiting to be scheduled"
)
KV_CACHE_USAGE = _spec("serve_app_kv_cache_usage", "gauge", "fraction of KV blocks in use")
PREFIX_CACHE_QUERY_TOKENS = _spec(
    "serve_app_prefix_cache_query_tokens", "counter", "prompt tokens looked up in the prefix cache"
)
PREFIX_CACHE_HIT_TOKENS = _spec(
    "serve_app_prefix_cache_hit_tokens", "counter", "prompt tokens found in the prefix cache"
)
PREEMPTIONS = _spec(
    "serve_app_engine_preemptions", "counter", "running sequences evicted for lack of KV blocks"
)
ENGINE_STEPS = _spec("serve_app_engine_steps", "counter", "engine steps that ran the model")
ENGINE_STEP_TIME_S = _spec(
    "serve_app_engine_step_time_s", "counter", "seconds spent in engine steps"
)
ENGINE_SCHEDULED_TOKENS = _spec(
    "serve_app_engine_scheduled_tokens", "counter", "tokens run by engine steps (batch tokens)"
)
ENGINE_SCHEDULED_SEQUENCES = _spec(
    "serve_app_engine_scheduled_sequences", "counter", "sequences run by engine steps (batch size)"
)
# ---- standalone processes (prometheus-client) -----------------------------------------
# The preemption watcher on each worker node (serve_app/preemption/) serves these on its own
# port: no `ray_` prefix, and counters gain `_total`.
PREEMPTION_POLLS = _spec(
    "serve_app_preemption_polls",
    "counter",
    "polls of the cloud's preemption notice by outcome",
    ("outcome",),
    exporter="prometheus_client",
)
PREEMPTION_NOTICES = _spec(
    "serve_app_preemption_notices",
    "counter",
    "spot interruption notices the preemption watcher saw",
    exporter="prometheus_client",
)
PREEMPTION_DRAINS = _spec(
    "serve_app_preemption_drains",
    "counter",
    "Ray node drains the preemption watcher asked for, by the GCS's answer",
    ("result",),
    exporter="prometheus_client",
)

# ---- exported by Ray and Ray Serve themselves (dashboards and alerts query them) ------
SERVE_REPLICA_HEALTHY = "ray_serve_deployment_replica_healthy"  # healthy replicas per deployment
RAY_ACTIVE_NODES = "ray_cluster_active_nodes"  # alive nodes by node type (autoscaler's view)
RAY_NODE_CPU_UTILIZATION = "ray_node_cpu_utilization"  # percent, per node


def report_periodically(report: Callable[[], None]) -> asyncio.Task:
    """Call `report()` now and every GAUGE_PERIOD_S on the running loop (cancel the task
    to stop): gauges must be set again and again, see BatcherMetrics.start_reporting."""

    async def loop() -> None:
        while True:
            report()
            await asyncio.sleep(GAUGE_PERIOD_S)

    return asyncio.get_running_loop().create_task(loop())


def _start_at_zero(counter: ray_metrics.Counter, label_sets: Iterable[dict[str, str]]) -> None:
    # Ray's Counter.inc refuses 0; recording 0 creates the series at 0 (see FAILOVER_REASONS).
    for tags in label_sets:
        counter._record(0, tags=tags)


class IngressMetrics:
    """Per finished request: its status, latencies and tokens (from a RequestTrace)."""

    def __init__(self) -> None:
        self.requests = REQUESTS.create_ray()
        self.first_token_s = TIME_TO_FIRST_TOKEN_S.create_ray()
        self.per_output_token_s = TIME_PER_OUTPUT_TOKEN_S.create_ray()
        self.inter_token_s = INTER_TOKEN_LATENCY_S.create_ray()
        self.latency_s = REQUEST_LATENCY_S.create_ray()
        self.tokens = TOKENS.create_ray()
        _start_at_zero(self.tokens, ({"kind": kind} for kind in TOKEN_KINDS))
        self.routes_seen: set[str] = set()

    def record_request(self, trace: RequestTrace) -> None:
        route = {"route": trace.route}
        if trace.route not in self.routes_seen:
            self.routes_seen.add(trace.route)
            outcomes = ({"status": status, "code": code} for status, code in ALERTED_OUTCOMES)
            _start_at_zero(self.requests, (route | outcome for outcome in outcomes))
        status = {"status": str(trace.status), "code": trace.error_code or "none"}
        self.requests.inc(tags=route | status)
        self.latency_s.observe(trace.e2e_s, tags=route)
        if trace.ttft_s is not None:
            self.first_token_s.observe(trace.ttft_s, tags=route)
        if trace.tpot_s is not None:
            self.per_output_token_s.observe(trace.tpot_s, tags=route)
        for gap_s in trace.token_gaps_s:
            self.inter_token_s.observe(gap_s, tags=route)
        if trace.prompt_tokens:
            self.tokens.inc(trace.prompt_tokens, tags={"kind": "prompt"})
        if trace.output_tokens:
            self.tokens.inc(trace.output_tokens, tags={"kind": "completion"})


class BatcherMetrics:
    def __init__(self) -> None:
        self.batch_size = BATCH_SIZE.create_ray()
        self.queue_wait_s = BATCH_QUEUE_WAIT_S.create_ray()
        self.queued_requests = BATCHER_QUEUED_REQUESTS.create_ray()
        self.window_s = BATCH_WINDOW_S.create_ray()
        self.failovers = FAILOVERS.create_ray()
        self.retries = RETRIES.create_ray()
        _start_at_zero(self.failovers, ({"reason": reason} for reason in FAILOVER_REASONS))
        _start_at_zero(self.retries, ({"reason": reason} for reason in RETRY_REASONS))
        self._reporter: asyncio.Task | None = None

    def start_reporting(self, read_queue: Callable[[], tuple[int, float]]) -> None:
        """Set the gauges from `read_queue()` -> (queued requests, window seconds) every
        GAUGE_PERIOD_S: Ray's agent drops a gauge that is not set again within two exports."""
        if self._reporter is None:
            self._reporter = report_periodically(lambda: self._set_gauges(*read_queue()))

    def _set_gauges(self, num_queued: int, window_s: float) -> None:
        self.queued_requests.set(num_queued)
        self.window_s.set(window_s)

    def record_batch(self, queue_waits_s: list[float]) -> None:
        self.batch_size.observe(len(queue_waits_s))
        for wait_s in queue_waits_s:
            self.queue_wait_s.observe(wait_s)

    def record_failover(self, reason: str) -> None:
        assert reason in FAILOVER_REASONS, reason
        self.failovers.inc(tags={"reason": reason})

    def record_retry(self, reason: str) -> None:
        assert reason in RETRY_REASONS, reason
        self.retries.inc(tags={"reason": reason})


class ReplicaMetrics:
    """Engine gauges, and the engine's running totals as Prometheus counters."""

    def __init__(self) -> None:
        self.running_requests = RUNNING_REQUESTS.create_ray()
        self.waiting_requests = WAITING_REQUESTS.create_ray()
        self.kv_cache_usage = KV_CACHE_USAGE.create_ray()
        self.counters = {spec.name: spec.create_ray() for spec in ENGINE_TOTALS}
        for counter in self.counters.values():
            _start_at_zero(counter, [{}])
        self.reported = dict.fromkeys(self.counters, 0.0)  # totals already exported

    def update(self, stats: EngineStats) -> None:
        self.running_requests.set(stats.num_running)
        self.waiting_requests.set(stats.num_waiting)
        self.kv_cache_usage.set(stats.kv_cache_usage)
        for name, total in engine_totals(stats).items():
            if total > self.reported[name]:
                self.counters[name].inc(total - self.reported[name])
                self.reported[name] = total


ENGINE_TOTALS = (
    PREFIX_CACHE_QUERY_TOKENS,
    PREFIX_CACHE_HIT_TOKENS,
    PREEMPTIONS,
    ENGINE_STEPS,
    ENGINE_STEP_TIME_S,
    ENGINE_SCHEDULED_TOKENS,
    ENGINE_SCHEDULED_SEQUENCES,
)


def engine_totals(stats: EngineStats) -> dict[str, float]:
    """The engine's running totals by the name of the counter each one feeds."""
    steps = stats.steps
    values = (
        stats.prefix_cache_query_tokens,
        stats.prefix_cache_hit_tokens,
        stats.num_preemptions,
        steps.num_steps,
        steps.step_time_s,
        steps.num_scheduled_tokens,
        steps.num_scheduled_seqs,
    )
    return {spec.name: value for spec, value in zip(ENGINE_TOTALS, values, strict=True)}
