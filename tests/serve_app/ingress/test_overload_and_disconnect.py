"""Overload answers 429 + Retry-After (never 5xx, never a hang) and every admitted request
completes; a client that disconnects frees its request and KV blocks on the replica."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.serve_app.replica_idle import wait_for_idle

pytestmark = [pytest.mark.slow, pytest.mark.ray]


async def one_request(client: httpx.AsyncClient, index: int) -> tuple[int, dict]:
    body = {"model": "tiny", "prompt": f"request {index}", "max_tokens": 16, "temperature": 0}
    if index % 2:  # half of them stream
        async with client.stream(
            "POST", "/v1/completions", json={**body, "stream": True}
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code, {"headers": response.headers, **response.json()}
            events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]"
            chunks = [json.loads(event[6:]) for event in events[:-1]]
            finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            return 200, {"finish_reason": finish[-1], "streamed": True}
    response = await client.post("/v1/completions", json=body)
    payload = response.json()
    if response.status_code == 200:
        return 200, {"finish_reason": payload["choices"][0]["finish_reason"], **payload}
    return response.status_code, {"headers": response.headers, **payload}


def test_flood_gets_successes_or_429_with_retry_after(live_app, replica_handle):
    num_flood = 3 * live_app.args["admission"]["max_requests"]

    async def flood() -> list[tuple[int, dict]]:
        async with httpx.AsyncClient(
            base_url=live_app.base_url, headers=live_app.headers(), timeout=120
        ) as client:
            return await asyncio.gather(*(one_request(client, i) for i in range(num_flood)))

    started = time.monotonic()
    results = asyncio.run(flood())
    elapsed = time.monotonic() - started
    statuses = [status for status, _ in results]
    print(f"flood {num_flood}: {statuses.count(200)} ok, {statuses.count(429)} 429, {elapsed:.1f}s")
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1, "the flood must exceed what the app admits"
    assert statuses.count(200) >= 1
    for status, payload in results:
        if status == 429:
            assert payload["headers"]["retry-after"] == str(
                live_app.args["limits"]["retry_after_s"]
            )
            assert payload["error"]["type"] == "rate_limit_error"
        else:
            assert payload["finish_reason"] in ("stop", "length")  # admitted ones complete
    assert elapsed < 100
    assert wait_for_idle(replica_handle)["num_running"] == 0


def test_disconnect_mid_stream_frees_the_replica(live_app, replica_handle):
    before = wait_for_idle(replica_handle)
    body = {
        "model": "tiny",
        "prompt": "a long story",
        "max_tokens": 2000,
        "ignore_eos": True,  # seconds of work, so the disconnect comes first
        "stream": True,
    }
    with (
        httpx.Client(base_url=live_app.base_url, headers=live_app.headers(), timeout=60) as http,
        http.stream("POST", "/v1/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        data = [line for line in (next(lines) for _ in range(8)) if line.startswith("data: ")]
        assert data
        during = replica_handle.stats.remote().result()
        assert during["num_running"] == 1
        assert during["num_used_kv_blocks"] > 0
    # The client has closed the connection after a few chunks of a 2000-token request.
    after = wait_for_idle(replica_handle)
    assert after["num_running"] == 0
    assert after["num_used_kv_blocks"] == 0
    assert after["num_active_streams"] == 0
    assert after["num_cancelled_streams"] == before["num_cancelled_streams"] + 1


def test_timed_out_non_streaming_request_is_aborted(live_app, replica_handle):
    before = wait_for_idle(replica_handle)
    body = {"model": "tiny", "prompt": "more", "max_tokens": 2000, "ignore_eos": True}
    with (
        httpx.Client(base_url=live_app.base_url, headers=live_app.headers(), timeout=1.0) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        http.post("/v1/completions", json=body)
    after = wait_for_idle(replica_handle)
    assert (after["num_running"], after["num_used_kv_blocks"]) == (0, 0)
    assert after["num_cancelled_streams"] == before["num_cancelled_streams"] + 1
