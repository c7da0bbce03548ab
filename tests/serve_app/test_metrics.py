"""Every metric the deployments record reaches Ray's exporter under its name in metrics.py."""

from __future__ import annotations

import time

import httpx
import pytest

from serve_app import metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Every metric a deployment records: Prometheus names ("_count" stands for a histogram).
EXPECTED = {
    spec.series("_count" if spec.kind == "histogram" else "")
    for spec in metrics.METRICS
    if spec.exporter == "ray"
}


def exported_values(metrics_url: str) -> dict[str, str]:
    text = httpx.get(metrics_url, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("#") or "serve_app_" not in line:
            continue
        series, _, value = line.rpartition(" ")
        values[series] = value
    return values


def test_request_token_and_engine_metrics_are_exported(live_app):
    response = httpx.post(
        live_app.api_url + "/completions",
        headers=live_app.headers(),
        json={
            "model": "tiny",
            "prompt": "metrics",
            "max_tokens": 4,
            "ignore_eos": True,
            "logprobs": 0,
        },
        timeout=60,
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 60
    while True:
        values = exported_values(live_app.metrics_url)
        names = {series.split("{")[0] for series in values}
        if names >= EXPECTED or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert names >= EXPECTED, sorted(names)
    ok_requests = [
        float(value)
        for series, value in values.items()
        if series.startswith(metrics.REQUESTS.series())
        and 'route="/v1/completions"' in series
        and 'status="200"' in series
        and 'code="none"' in series
    ]
    assert ok_requests and ok_requests[0] >= 1
    completion_tokens = [
        float(value)
        for series, value in values.items()
        if series.startswith(metrics.TOKENS.series()) and "completion" in series
    ]
    assert completion_tokens and completion_tokens[0] >= 3
