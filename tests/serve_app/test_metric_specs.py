"""The metric list itself: unique names, Prometheus names, the outcomes created at 0 match
what the ingress records, and the standalone (prometheus-client) exporter's counter."""

from __future__ import annotations

import prometheus_client

from serve_app import metrics
from serve_app.engine.engine import EngineStats, StepTotals
from serve_app.engine.errors import EngineDeadError
from serve_app.ingress.downstream_errors import to_api_error
from serve_app.ingress.errors import overloaded
from serve_app.preemption.watcher import WatcherMetrics
from serve_app.request_log import DISCONNECTED_CODE, DISCONNECTED_STATUS


def test_names_are_unique_and_prometheus_names_follow_the_exporter():
    names = [spec.name for spec in metrics.METRICS]
    assert len(names) == len(set(names))
    assert metrics.REQUESTS.series() == "ray_serve_app_requests_total"
    assert metrics.KV_CACHE_USAGE.series() == "ray_serve_app_kv_cache_usage"
    assert metrics.REQUEST_LATENCY_S.series("_bucket") == "ray_serve_app_request_latency_s_bucket"
    assert metrics.PREEMPTION_DRAINS.series() == "serve_app_preemption_drains_total"  # no prefix
    for spec in metrics.METRICS:
        assert (spec.kind == "histogram") == bool(spec.boundaries), spec.name
        assert list(spec.boundaries) == sorted(spec.boundaries), spec.name


def test_outcomes_created_at_zero_are_the_ones_the_ingress_records():
    recorded = {
        ("200", "none"),
        ("429", overloaded(1, "busy").code),
        (str(DISCONNECTED_STATUS), DISCONNECTED_CODE),
        ("500", to_api_error(RuntimeError("bug"), 1).code),
        ("503", to_api_error(EngineDeadError("dead"), 1).code),
    }
    assert set(metrics.ALERTED_OUTCOMES) == recorded


def test_every_engine_total_feeds_its_counter():
    stats = EngineStats(1, 2, 10, 5, 0.5, 0.25, 7, 40, 10, StepTotals(3, 0.25, 60, 9))
    totals = metrics.engine_totals(stats)
    assert totals == {
        metrics.PREFIX_CACHE_QUERY_TOKENS.name: 40,
        metrics.PREFIX_CACHE_HIT_TOKENS.name: 10,
        metrics.PREEMPTIONS.name: 7,
        metrics.ENGINE_STEPS.name: 3,
        metrics.ENGINE_STEP_TIME_S.name: 0.25,
        metrics.ENGINE_SCHEDULED_TOKENS.name: 60,
        metrics.ENGINE_SCHEDULED_SEQUENCES.name: 9,
    }


def test_watcher_counters_are_exported_from_zero_under_their_spec_names():
    registry = prometheus_client.CollectorRegistry()
    watcher = WatcherMetrics.create(registry)
    series = metrics.PREEMPTION_DRAINS.series()
    assert registry.get_sample_value(series, {"result": "accepted"}) == 0
    assert registry.get_sample_value(metrics.PREEMPTION_POLLS.series(), {"outcome": "error"}) == 0
    assert registry.get_sample_value(metrics.PREEMPTION_NOTICES.series()) == 0
    watcher.drains.labels(result="accepted").inc()
    assert registry.get_sample_value(series, {"result": "accepted"}) == 1
    assert (
        f'{series}{{result="accepted"}} 1.0' in prometheus_client.generate_latest(registry).decode()
    )
