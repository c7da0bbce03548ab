"""The retrying gRPC clients against a real gRPC server on loopback that implements the app's
LLM service with scripted failures: retried codes, both Retry-After forms, the idempotency
key, the deadline, and streams cut mid-way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
import pytest

from serve_app.client import (
    AsyncRetryingGrpcClient,
    DeadlineExceededError,
    RequestFailedError,
    RetryingGrpcClient,
    RetryPolicy,
    StreamInterruptedError,
    Waits,
)
from serve_app.proto import llm_pb2, llm_pb2_grpc
from tests.serve_app.conftest import free_port

REQUEST = llm_pb2.GenerateRequest(model="tiny", prompt="hi", max_tokens=4)
POLICY = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, total_timeout_s=30)
Code = grpc.StatusCode


@dataclass
class Fail:
    code: grpc.StatusCode
    details: str
    trailing: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


@dataclass
class Stream:
    chunks: list[tuple[str, list[int], str]]  # text, token ids, finish_reason
    then: Fail | None = None  # abort with this after the chunks


def response(text: str = "ok") -> llm_pb2.GenerateResponse:
    return llm_pb2.GenerateResponse(text=text, finish_reason="stop")


class ScriptedLLM(llm_pb2_grpc.LLMServicer):
    def __init__(self, *script) -> None:
        self.script = list(script)
        self.metadata: list[dict[str, str]] = []
        self.released = threading.Event()  # ends the delays of slow steps at teardown

    def _next(self, context):
        self.metadata.append(dict(context.invocation_metadata()))
        step = self.script.pop(0)
        if isinstance(step, Fail):
            self._abort(step, context)
        return step

    def _abort(self, failure: Fail, context) -> None:
        self.released.wait(failure.delay_s)
        context.set_trailing_metadata(failure.trailing)
        context.abort(failure.code, failure.details)

    def Generate(self, request, context):
        return self._next(context)

    def GenerateStream(self, request, context):
        stream = self._next(context)
        for text, token_ids, finish_reason in stream.chunks:
            yield llm_pb2.GenerateChunk(text=text, token_ids=token_ids, finish_reason=finish_reason)
        if stream.then is not None:
            self._abort(stream.then, context)

    def idempotency_keys(self) -> list[str | None]:
        return [metadata.get("idempotency-key") for metadata in self.metadata]


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(*script) -> tuple[ScriptedLLM, str]:
        servicer = ScriptedLLM(*script)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        llm_pb2_grpc.add_LLMServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((servicer, server))
        return servicer, f"127.0.0.1:{port}"

    yield start
    for servicer, server in servers:
        servicer.released.set()
        server.stop(grace=None)


def recorded_waits() -> tuple[Waits, list[float]]:
    slept: list[float] = []
    return Waits(sleep=slept.append, random=lambda: 0.0), slept


def test_unavailable_is_retried_with_one_idempotency_key_and_credentials(serve):
    servicer, target = serve(
        Fail(Code.UNAVAILABLE, "draining"), Fail(Code.UNAVAILABLE, "x"), response()
    )
    waits, slept = recorded_waits()
    with RetryingGrpcClient(target, "key", "llm", POLICY, waits=waits) as client:
        assert client.generate(REQUEST).text == "ok"
    keys = servicer.idempotency_keys()
    assert len(keys) == 3 and keys[0] and len(set(keys)) == 1
    assert servicer.metadata[0]["authorization"] == "Bearer key"
    assert servicer.metadata[0]["application"] == "llm"
    assert len(slept) == 2


def test_retry_after_from_trailing_metadata_and_from_the_details_suffix(serve):
    trailing = Fail(
        Code.RESOURCE_EXHAUSTED, "queue full (retry after 9 s)", (("retry-after", "3"),)
    )
    suffix = Fail(Code.RESOURCE_EXHAUSTED, "the replicas' queue is full (retry after 2 s)")
    _, target = serve(trailing, response(), Stream([], then=suffix), Stream([("a", [7], "stop")]))
    waits, slept = recorded_waits()  # random 0: the jitter adds nothing
    with RetryingGrpcClient(target, policy=POLICY, waits=waits) as client:
        client.generate(REQUEST)
        assert [chunk.text for chunk in client.generate_stream(REQUEST)] == ["a"]
    assert slept == [3, 2]  # trailing metadata wins over the details


@pytest.mark.parametrize(
    "code", [Code.INVALID_ARGUMENT, Code.UNAUTHENTICATED, Code.NOT_FOUND, Code.INTERNAL]
)
def test_codes_not_safe_to_retry_fail_at_once(serve, code):
    servicer, target = serve(Fail(code, "max_tokens: must be at least 1"), response())
    client = RetryingGrpcClient(target, policy=POLICY)
    with client, pytest.raises(RequestFailedError, match="max_tokens: must be") as failure:
        client.generate(REQUEST)
    assert failure.value.status == code and failure.value.attempts == 1
    assert len(servicer.metadata) == 1


def test_the_deadline_bounds_a_slow_call_and_a_refused_server():
    policy = RetryPolicy(
        initial_backoff_s=0.05, max_backoff_s=0.1, max_attempts=1000, total_timeout_s=1.0
    )
    with RetryingGrpcClient(f"127.0.0.1:{free_port()}", policy=policy) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            client.generate(REQUEST)
        assert 0.8 < time.monotonic() - started < 6  # generous: a loaded shared box


def test_a_slow_answer_ends_at_the_deadline(serve):
    _, target = serve(Fail(Code.UNAVAILABLE, "too late", delay_s=20))
    with RetryingGrpcClient(target, policy=RetryPolicy(total_timeout_s=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="DEADLINE_EXCEEDED"):
            client.generate(REQUEST)
        assert time.monotonic() - started < 6


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (
            Stream(
                [("ab", [1, 2], ""), ("c", [3], "")], then=Fail(Code.UNAVAILABLE, "replica died")
            ),
            "UNAVAILABLE: replica died",
        ),
        (Stream([("ab", [1, 2], ""), ("c", [3], "")]), "ended before its last chunk"),
    ],
    ids=["aborted-mid-way", "ended-without-finish-reason"],
)
def test_a_stream_cut_after_output_raises_with_what_arrived(serve, stream, reason):
    servicer, target = serve(stream, Stream([("x", [9], "stop")]))
    received = []
    client = RetryingGrpcClient(target, policy=POLICY)
    with client, pytest.raises(StreamInterruptedError) as cut:
        for chunk in client.generate_stream(REQUEST):
            received.append(chunk.text)
    assert received == ["ab", "c"]
    assert (cut.value.chunks, cut.value.chars, cut.value.tokens) == (2, 3, 3)
    assert reason in str(cut.value) and "3 token(s)" in str(cut.value)
    assert len(servicer.metadata) == 1


def test_async_client_retries_and_reports_a_cut_stream(serve):
    cut = Stream([("ab", [1, 2], "")], then=Fail(Code.UNAVAILABLE, "node drained"))
    servicer, target = serve(
        Fail(Code.UNAVAILABLE, "draining"), response(), Fail(Code.RESOURCE_EXHAUSTED, "busy"), cut
    )
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    async def scenario() -> tuple[str, list[str]]:
        waits = Waits(async_sleep=record, random=lambda: 0.5)
        async with AsyncRetryingGrpcClient(target, policy=POLICY, waits=waits) as client:
            text = (await client.generate(REQUEST)).text
            received = []
            with pytest.raises(StreamInterruptedError, match="UNAVAILABLE: node drained"):
                async for chunk in client.generate_stream(REQUEST):
                    received.append(chunk.text)
            return text, received

    text, received = asyncio.run(scenario())
    assert text == "ok" and received == ["ab"]
    assert len(slept) == 2 and len(servicer.metadata) == 4
