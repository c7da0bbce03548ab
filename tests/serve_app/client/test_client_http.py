"""The retrying HTTP client against a real scripted HTTP server on loopback: what it retries,
Retry-After, the idempotency key, the total deadline, and cut SSE streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from serve_app.client import (
    AsyncRetryingHttpClient,
    DeadlineExceededError,
    RequestFailedError,
    RetryingHttpClient,
    RetryPolicy,
    StreamInterruptedError,
    Waits,
)
from tests.serve_app.client.scripted_http_server import (
    Reply,
    ScriptedHttpServer,
    SseReply,
    completion_chunk,
    error_reply,
)
from tests.serve_app.conftest import free_port

BODY = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
OK = Reply(200, {"object": "text_completion", "choices": [{"text": "ok"}]})
FAST = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, total_timeout_s=30)


def recorded_waits() -> tuple[Waits, list[float]]:
    """Real clock, no real sleeping: the waits are recorded."""
    slept: list[float] = []
    return Waits(sleep=slept.append, random=lambda: 0.5), slept


@contextmanager
def serving(*replies, **client_options) -> Iterator[tuple[ScriptedHttpServer, RetryingHttpClient]]:
    with (
        ScriptedHttpServer(*replies) as server,
        RetryingHttpClient(server.base_url, **client_options) as client,
    ):
        yield server, client


def test_503_and_429_are_retried_with_one_idempotency_key():
    waits, slept = recorded_waits()
    with serving(
        error_reply(503, "draining"),
        error_reply(429, "busy"),
        OK,
        api_key="key",
        policy=FAST,
        waits=waits,
    ) as (server, client):
        assert client.post("/completions", BODY)["choices"][0]["text"] == "ok"
    keys = server.idempotency_keys()
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert server.requests[0][0]["Authorization"] == "Bearer key"
    assert len(slept) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_a_status_that_is_not_safe_to_retry_fails_at_once(status):
    waits, slept = recorded_waits()
    with (
        serving(error_reply(status, "prompt: too long"), OK, policy=FAST, waits=waits) as (
            server,
            client,
        ),
        pytest.raises(RequestFailedError) as failure,
    ):
        client.post("/completions", BODY)
    assert failure.value.status == status and failure.value.attempts == 1
    assert failure.value.message == "prompt: too long"
    assert len(server.requests) == 1 and slept == []


def test_retry_after_is_waited_for_in_real_time():
    with serving(error_reply(429, "busy", retry_after="1"), OK, policy=FAST) as (_, client):
        started = time.monotonic()
        client.post("/completions", BODY)
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 10  # the jittered backoff alone would be under 0.05 s


def test_retry_after_beyond_the_deadline_ends_the_call_without_waiting():
    policy = RetryPolicy(initial_backoff_s=0.01, total_timeout_s=2)
    with serving(error_reply(503, "draining", retry_after="30"), OK, policy=policy) as (
        server,
        client,
    ):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="total_timeout_s"):
            client.post("/completions", BODY)
    assert time.monotonic() - started < 10 and len(server.requests) == 1  # not 30 s


def test_the_total_deadline_bounds_retries_and_slow_answers():
    policy = RetryPolicy(
        initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=1000, total_timeout_s=1.0
    )
    unavailable = [error_reply(503, "draining")] * 200
    with serving(*unavailable, policy=policy) as (server, client):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match=r"after [0-9]+ attempt"):
            client.post("/completions", BODY)
        assert 0.8 < time.monotonic() - started < 6  # generous: a loaded shared box
    assert 3 < len(server.requests) < 200
    with serving(Reply(200, {}, delay_s=20), policy=policy) as (server, client):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.post("/completions", BODY)
        assert time.monotonic() - started < 6


def test_connection_refused_is_retried_up_to_max_attempts():
    waits, slept = recorded_waits()
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    client = RetryingHttpClient(f"http://127.0.0.1:{free_port()}/v1", policy=policy, waits=waits)
    with client, pytest.raises(RequestFailedError, match="no response: ConnectError") as failure:
        client.post("/completions", BODY)
    assert failure.value.status is None and failure.value.attempts == 3 and len(slept) == 2


def test_a_whole_stream_is_yielded_to_its_end():
    events = [completion_chunk("Hel"), completion_chunk("lo", "length")]
    with serving(SseReply(events), policy=FAST) as (server, client):
        received = list(client.stream("/completions", BODY))
    assert [e["choices"][0]["text"] for e in received] == ["Hel", "lo"]
    assert server.requests[0][1]["stream"] is True


def test_a_stream_refused_or_cut_before_its_first_event_is_retried():
    waits, _ = recorded_waits()
    events = [completion_chunk("a", "stop")]
    replies = [error_reply(503, "draining"), SseReply([], done=False), SseReply(events)]
    with serving(*replies, policy=FAST, waits=waits) as (server, client):
        assert len(list(client.stream("/completions", BODY))) == 1
    assert len(server.requests) == 3 and len(set(server.idempotency_keys())) == 1


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (SseReply([completion_chunk("abc"), completion_chunk("de")], done=False), "[DONE]"),
        (
            SseReply([completion_chunk("abc"), completion_chunk("de")], done=False, chunked=True),
            "RemoteProtocolError",
        ),
        (
            SseReply(
                [
                    completion_chunk("abc"),
                    completion_chunk("de"),
                    {"error": {"message": "replica died", "type": "internal_error"}},
                ]
            ),
            "the server reported: replica died",
        ),
        (SseReply([completion_chunk("abc"), completion_chunk("de")]), "without a finish_reason"),
    ],
    ids=["closed-before-done", "chunked-cut", "in-band-error", "done-without-finish"],
)
def test_a_stream_cut_after_output_raises_with_what_arrived(reply, reason):
    with serving(reply, SseReply([completion_chunk("x", "stop")]), policy=FAST) as (server, client):
        received = []
        with pytest.raises(StreamInterruptedError) as cut:
            for event in client.stream("/completions", BODY):
                received.append(event["choices"][0]["text"])
    assert received == ["abc", "de"]
    assert (cut.value.chunks, cut.value.chars, cut.value.tokens) == (2, 5, None)
    assert reason in str(cut.value) and "2 chunk(s), 5 character(s)" in str(cut.value)
    assert len(server.requests) == 1  # output had reached the caller: not silently re-run


def test_async_client_retries_and_reports_a_cut_stream():
    waits, slept = recorded_waits()

    async def record(seconds: float) -> None:
        slept.append(seconds)

    waits = Waits(async_sleep=record, random=lambda: 0.5)
    cut = SseReply([completion_chunk("abc")], done=False)
    replies = [error_reply(503, "draining"), OK, error_reply(429, "busy"), cut]

    async def scenario(server: ScriptedHttpServer) -> tuple[dict, list[str]]:
        async with AsyncRetryingHttpClient(server.base_url, policy=FAST, waits=waits) as client:
            body = await client.post("/completions", BODY)
            texts = []
            with pytest.raises(StreamInterruptedError, match="1 chunk"):
                async for event in client.stream("/completions", BODY):
                    texts.append(event["choices"][0]["text"])
            return body, texts

    with ScriptedHttpServer(*replies) as server:
        body, texts = asyncio.run(scenario(server))
    assert body["choices"][0]["text"] == "ok" and texts == ["abc"]
    assert len(slept) == 2 and len(server.requests) == 4
