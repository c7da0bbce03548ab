"""Every Prometheus metric of the app, defined once (names are what dashboards query).

Exported through Ray's metrics agent (`ray.serve.metrics`), which adds the deployment,
replica and application tags and the `ray_` prefix: Prometheus sees `ray_serve_app_requests_total`
(counters gain `_total`, histograms `_bucket`/`_sum`/`_count`). Create them inside a replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from ray.serve import metrics

REQUESTS = "serve_app_requests"
REQUEST_LATENCY_S = "serve_app_request_latency_s"
TOKENS = "serve_app_tokens"
RUNNING_REQUESTS = "serve_app_running_requests"
KV_CACHE_USAGE = "serve_app_kv_cache_usage"
BATCH_SIZE = "serve_app_batch_size"
BATCH_QUEUE_WAIT_S = "serve_app_batch_queue_wait_s"

PROMETHEUS_PREFIX = "ray_"  # what Ray's exporter puts before every name

LATENCY_BOUNDARIES_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
QUEUE_WAIT_BOUNDARIES_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1]


@dataclass
class IngressMetrics:
    requests: metrics.Counter
    latency_s: metrics.Histogram
    tokens: metrics.Counter

    @classmethod
    def create(cls) -> IngressMetrics:
        return cls(
            requests=metrics.Counter(
                REQUESTS, "HTTP requests by route and status", tag_keys=("route", "status")
            ),
            latency_s=metrics.Histogram(
                REQUEST_LATENCY_S,
                "end-to-end request latency in seconds",
                boundaries=LATENCY_BOUNDARIES_S,
                tag_keys=("route",),
            ),
            tokens=metrics.Counter(TOKENS, "prompt and completion tokens", tag_keys=("kind",)),
        )

    def record(self, route: str, status: int, latency_s: float) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency_s.observe(latency_s, tags={"route": route})

    def count_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, tags={"kind": "prompt"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, tags={"kind": "completion"})


@dataclass
class ReplicaMetrics:
    running_requests: metrics.Gauge
    kv_cache_usage: metrics.Gauge

    @classmethod
    def create(cls) -> ReplicaMetrics:
        return cls(
            running_requests=metrics.Gauge(RUNNING_REQUESTS, "requests inside the engine"),
            kv_cache_usage=metrics.Gauge(KV_CACHE_USAGE, "fraction of KV blocks in use"),
        )

    def update(self, num_running: int, kv_cache_usage: float) -> None:
        self.running_requests.set(num_running)
        self.kv_cache_usage.set(kv_cache_usage)


@dataclass
class BatcherMetrics:
    batch_size: metrics.Histogram
    queue_wait_s: metrics.Histogram

    @classmethod
    def create(cls) -> BatcherMetrics:
        return cls(
            batch_size=metrics.Histogram(
                BATCH_SIZE,
                "requests forwarded to a model replica in one call",
                boundaries=BATCH_SIZE_BOUNDARIES,
            ),
            queue_wait_s=metrics.Histogram(
                BATCH_QUEUE_WAIT_S,
                "seconds a request waited in the batcher before it was forwarded",
                boundaries=QUEUE_WAIT_BOUNDARIES_S,
            ),
        )

    def record_batch(self, queue_waits_s: list[float]) -> None:
        self.batch_size.observe(len(queue_waits_s))
        for wait_s in queue_waits_s:
            self.queue_wait_s.observe(wait_s)


# ---- standalone processes ----------------------------------------------------------------
# Processes outside Serve (the preemption watcher on each worker node) serve these with
# prometheus-client on their own port: no `ray_` prefix, and counters gain `_total`.
PREEMPTION_POLLS = "serve_app_preemption_polls"  # label outcome: no_notice, notice, error
PREEMPTION_NOTICES = "serve_app_preemption_notices"
PREEMPTION_DRAINS = "serve_app_preemption_drains"  # label result: accepted, rejected, error
