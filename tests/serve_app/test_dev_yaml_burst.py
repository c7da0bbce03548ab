"""The default dev app absorbs a burst: 128 concurrent streams against the application of
deployments/dev.yaml, as the file configures it, all complete with 0 errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.ray]

DEV_YAML = Path(__file__).parents[2] / "deployments" / "dev.yaml"
BURST_APP = "dev-burst"
NUM_STREAMS = 128


@pytest.fixture(scope="module")
def dev_app_url(live_app):
    from ray import serve

    from serve_app.app import build_app

    [application] = yaml.safe_load(DEV_YAML.read_text())["applications"]
    args = application["args"]
    assert "admission" not in args  # the defaults are what is under test
    serve.run(build_app(args), name=BURST_APP, route_prefix="/" + BURST_APP)
    yield f"{live_app.base_url}/{BURST_APP}"
    serve.delete(BURST_APP)


async def one_stream(client: httpx.AsyncClient, url: str, index: int) -> tuple[int, list[str]]:
    body = {
        "model": "tiny",
        "prompt": f"burst {index} " * (1 + index % 8),
        "max_tokens": 8 + index % 9,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return response.status_code, [(await response.aread()).decode()]
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    return 200, events


def test_a_burst_of_128_streams_completes_with_no_error(dev_app_url):
    async def burst():
        limits = httpx.Limits(max_connections=NUM_STREAMS)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(
                *(one_stream(client, dev_app_url, index) for index in range(NUM_STREAMS))
            )

    results = asyncio.run(burst())
    failures = [(status, events[-1:]) for status, events in results if status != 200]
    assert failures == []
    for index, (_, events) in enumerate(results):
        assert events[-1] == "[DONE]", events[-2:]
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] == 8 + index % 9
