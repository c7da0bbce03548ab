"""Every dashboard panel's query and every alert rule against a real Prometheus.

Prometheus (Debian's package, started by the test on loopback) scrapes the session app's
Ray metrics export port every second while the app serves a steady trickle of streaming
requests, a flood beyond its admission limits (429s) and some invalid ones (400s). Then:
each panel query returns data, each alert's signal returns data and its rule evaluates,
and the shed-requests alert, with its knobs lowered in a test copy of the rules, is shown
firing in Prometheus' own /api/v1/alerts while the 5xx alert, at its shipped threshold,
is not. The preemption watcher's exporter (prometheus-client) is served from this process:
the watcher itself is not written yet, its metric class is. Lives beside the session app's
fixture (tests/serve_app/conftest.py); Prometheus' helper is tests/dashboards/.
"""

from __future__ import annotations

import asyncio
import threading
import time
from urllib.parse import urlparse

import httpx
import prometheus_client
import pytest

from dashboards import alerts, panels
from dashboards.promql import RATE_INTERVAL
from serve_app.preemption.watcher import WatcherMetrics
from tests.dashboards.prometheus_server import free_port, running_prometheus, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TEST_WINDOW = "30s"  # rate windows of panels and rules here: a few dozen 1 s scrapes
PROVOKED = "ServeAppRequestsShed"
NOT_PROVOKED = "ServeAppHighErrorRate"
SHARED_PREFIX = "You are a helpful assistant. Answer briefly and precisely. " * 2
DATA_TIMEOUT_S = 120


class Trickle(threading.Thread):
    """Streams a request every ~0.2 s until stopped, so rates over the window stay > 0."""

    def __init__(self, live_app) -> None:
        super().__init__(daemon=True)
        self.live_app = live_app
        self.stopped = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        with httpx.Client(headers=self.live_app.headers(), timeout=60) as client:
            index = 0
            while not self.stopped.wait(0.2):
                body = {
                    "model": "tiny",
                    "prompt": f"{SHARED_PREFIX} question {index}",  # prefix-cache hits
                    "max_tokens": 8,
                    "ignore_eos": True,
                    "logprobs": 0,  # every token its own chunk: inter-token gaps exist
                    "stream": True,
                }
                url = self.live_app.api_url + "/completions"
                with client.stream("POST", url, json=body) as response:
                    response.read()
                    self.statuses.append(response.status_code)
                index += 1


async def flood(live_app, count: int) -> list[int]:
    body = {"model": "tiny", "prompt": "flood", "max_tokens": 32, "ignore_eos": True}
    async with httpx.AsyncClient(headers=live_app.headers(), timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post(live_app.api_url + "/completions", json=body) for _ in range(count))
        )
    return [response.status_code for response in responses]


def alerts_for_test() -> list[alerts.Alert]:
    """The shipped rules with every window shortened and the provoked alert's knobs lowered."""
    overrides = {alert.name: {"window": TEST_WINDOW} for alert in alerts.ALERTS}
    overrides[PROVOKED] = {"threshold": 0.02, "window": "1m", "for_": "1s"}
    return alerts.with_knobs(overrides)


def panel_expr(expr: str) -> str:
    return expr.replace(RATE_INTERVAL, TEST_WINDOW)


def test_every_panel_and_alert_against_live_prometheus(live_app, tmp_path):
    registry = prometheus_client.CollectorRegistry()
    WatcherMetrics.create(registry)  # what the preemption watcher exports: 0 drains so far
    watcher_port = free_port()
    watcher_server, _ = prometheus_client.start_http_server(
        watcher_port, addr="127.0.0.1", registry=registry
    )
    ray_metrics = urlparse(live_app.metrics_url).netloc
    targets = [ray_metrics, f"127.0.0.1:{watcher_port}"]
    trickle = Trickle(live_app)
    rules = alerts_for_test()
    try:
        with running_prometheus(tmp_path, targets, alerts.rule_file(rules)) as prometheus:
            assert set(prometheus.rule_names()) == {alert.name for alert in alerts.ALERTS}
            trickle.start()
            invalid = httpx.post(
                live_app.api_url + "/completions",
                headers=live_app.headers(),
                json={"model": "tiny", "prompt": "x", "max_tokens": -1},
                timeout=30,
            )
            assert invalid.status_code == 400

            queries = [
                (f"{panel.title} / {query.legend}", panel_expr(query.expr))
                for _, panel in panels.all_panels()
                for query in panel.queries
            ]
            queries += [(f"alert {a.name}", a.signal) for a in rules]

            # Each query returns data at some point. Not all in one pass: Ray drops a gauge
            # whose process exported late (its TTL is two export intervals), which a busy
            # 2-core machine makes happen (a suite run here saw the gauges come and go).
            deadline = time.monotonic() + DATA_TIMEOUT_S
            missing = dict(queries)
            while missing:
                missing = {
                    name: expr for name, expr in missing.items() if not prometheus.query(expr)
                }
                assert not missing or time.monotonic() < deadline, f"no data for {sorted(missing)}"
                time.sleep(1)
            for alert in rules:
                prometheus.query(alert.expr)  # every rule evaluates (empty = not firing)

            def value(expr: str) -> float:
                return max(float(series["value"][1]) for series in prometheus.query(expr))

            # Values, not just series: the load shows up once Ray has exported it twice.
            overview = {panel.title: panel for panel in panels.OVERVIEW.panels}
            requests = panel_expr(overview["Requests per second by route"].queries[0].expr)
            wait_until(lambda: value(requests) > 0, DATA_TIMEOUT_S, "a request rate above 0")
            ttft_p50 = panel_expr(overview["Time to first token"].queries[0].expr)
            # NaN (a quantile of no observations in the window) until the trickle's are in.
            wait_until(lambda: 0 < value(ttft_p50) < 60, DATA_TIMEOUT_S, "a TTFT p50 in (0, 60) s")
            kv_by_replica = panel_expr(panels.ENGINE.panels[0].queries[0].expr)
            assert all(s["metric"].get("replica") for s in prometheus.query(kv_by_replica))

            def firing() -> list[dict]:
                return [
                    alert
                    for alert in prometheus.alerts()
                    if alert["labels"]["alertname"] == PROVOKED and alert["state"] == "firing"
                ]

            assert not firing()  # before the flood, nothing is shed
            statuses = asyncio.run(flood(live_app, 3 * live_app.args["admission"]["max_requests"]))
            assert statuses.count(429) >= 1, statuses  # what the provoked alert measures

            [fired] = wait_until(firing, 60, f"{PROVOKED} firing in /api/v1/alerts")
            assert float(fired["value"]) > 0.02
            assert fired["annotations"]["runbook"].endswith(PROVOKED.lower())
            names = {alert["labels"]["alertname"] for alert in prometheus.alerts()}
            assert NOT_PROVOKED not in names
    finally:
        trickle.stopped.set()
        if trickle.is_alive():
            trickle.join(timeout=60)
        watcher_server.shutdown()
