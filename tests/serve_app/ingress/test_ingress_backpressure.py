"""When the ingress itself is full, Serve's proxy answers 429 with Retry-After (not its
default 503): a second, deliberately tiny app on the session's Serve instance."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROUTE = "/tight"


@pytest.fixture(scope="module")
def tight_app(live_app):
    from ray import serve

    from serve_app.app import build_app

    args = {
        **live_app.args,
        "ingress": {"num_cpus": 0.05, "max_ongoing_requests": 1, "max_queued_requests": 1},
        "replica": {"num_cpus": 0.25, "graceful_shutdown_timeout_s": 1},
        "limits": {**live_app.args["limits"], "retry_after_s": 3},
    }
    serve.run(build_app(args), name="tight", route_prefix=ROUTE)
    yield live_app.base_url + ROUTE
    serve.delete("tight", _blocking=False)  # its replicas stop in the background


async def slow_stream(client: httpx.AsyncClient, url: str) -> tuple[int, httpx.Headers]:
    body = {"model": "tiny", "prompt": "x", "max_tokens": 300, "ignore_eos": True, "stream": True}
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        await response.aread()
        return response.status_code, response.headers


def test_full_ingress_answers_429_with_retry_after(live_app, tight_app):
    async def flood():
        async with httpx.AsyncClient(headers=live_app.headers(), timeout=120) as client:
            return await asyncio.gather(*(slow_stream(client, tight_app) for _ in range(8)))

    results = asyncio.run(flood())
    statuses = [status for status, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert 1 <= statuses.count(200) < len(statuses)
    assert all(headers["retry-after"] == "3" for status, headers in results if status == 429)
