"""Tokens grouped into fewer, fuller messages (time slices plus a token interval) reach the
client exactly as one-token-per-message delivery does: the same streamed text, finish
reasons, usage counts, stop-string cut and logprobs, over concurrent streams."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPTS = ["The quick brown fox"] + [f"Tale {index}: once upon a time" for index in range(5)]


async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    choices = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    return {
        "text": "".join(choice["text"] for choice in choices),
        "finish": [choice["finish_reason"] for choice in choices if choice["finish_reason"]],
        "usage": chunks[-1]["usage"],
        "logprobs": [
            (token, logprob)
            for choice in choices
            if choice["logprobs"]
            for token, logprob in zip(
                choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"], strict=True
            )
        ],
        "num_chunks": len(choices),
    }


def run_all(live_app, url: str, stop: str | None) -> list[dict]:
    async def run() -> list[dict]:
        async with httpx.AsyncClient(headers=live_app.headers(), timeout=120) as client:
            bodies = [
                {
                    "model": "tiny",
                    "prompt": prompt,
                    "max_tokens": 40,
                    "temperature": 0,
                    "logprobs": 1,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **({"stop": [stop]} if stop else {}),
                }
                for prompt in PROMPTS
            ]
            return await asyncio.gather(*(stream_one(client, url, body) for body in bodies))

    return asyncio.run(run())


def test_grouped_delivery_gives_the_same_stream_as_one_token_per_message(live_app, spare_app_url):
    plain = run_all(live_app, live_app.base_url, None)
    text = plain[0]["text"]
    start = next(i for i in range(4, len(text) - 2) if "\ufffd" not in text[i : i + 2])
    stop = text[start : start + 2]  # a stop string from the middle of a greedy text

    expected = run_all(live_app, live_app.base_url, stop)
    grouped = run_all(live_app, spare_app_url, stop)
    for one, other in zip(expected, grouped, strict=True):
        assert {k: v for k, v in one.items() if k != "num_chunks"} == {
            k: v for k, v in other.items() if k != "num_chunks"
        }
    assert expected[0]["finish"] == ["stop"]
    assert expected[0]["usage"]["completion_tokens"] < 40
    assert ["length"] in [r["finish"] for r in expected]
    # The grouping really happened: fewer chunks for the same tokens.
    assert sum(r["num_chunks"] for r in grouped) < sum(r["num_chunks"] for r in expected)
