"""Retrying gRPC clients (sync and async) for the app's `serve_app.llm.LLM` service.

Every attempt of one call sends the same `idempotency-key` metadata. Retried: UNAVAILABLE
(which is also how gRPC reports a refused connection) and RESOURCE_EXHAUSTED, after at least
the server's Retry-After (`retry-after` trailing metadata, or the "(retry after N s)" suffix
of the details, as serve_app/ingress/grpc.py sends them); other codes fail at once with
`RequestFailedError`. gRPC's own retry policy (service config) is not used: it reads neither
of those Retry-After forms. A stream is retried only before its first chunk; a cut after
that raises `StreamInterruptedError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio

from serve_app.client.base import AsyncClientBase, SyncClientBase
from serve_app.client.retry import (
    DeadlineExceededError,
    Failure,
    RequestFailedError,
    RetryPolicy,
    Waits,
    async_call_with_retries,
    call_with_retries,
    new_idempotency_key,
    parse_retry_after,
    retry_after_from_details,
)
from serve_app.client.stream_progress import StreamCut, StreamProgress
from serve_app.proto import llm_pb2, llm_pb2_grpc

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
IDEMPOTENCY_METADATA = "idempotency-key"
STREAM_END = "its last chunk (finish_reason)"


def classify(error: Exception) -> Failure | None:
    """Whether a failed attempt is safe to retry, and the error the call ends with if not."""
    if isinstance(error, StreamCut):  # before anything reached the caller
        return Failure(True, RequestFailedError(str(error)))
    if not isinstance(error, grpc.RpcError) or not hasattr(error, "code"):
        return None
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Failure(False, DeadlineExceededError(f"DEADLINE_EXCEEDED: {details}"))
    retry_after = _trailing_retry_after(error) or retry_after_from_details(details)
    failed = RequestFailedError(details or code.name, code)
    return Failure(code in RETRYABLE_CODES, failed, retry_after)


def _trailing_retry_after(error: grpc.RpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key == "retry-after":
            return parse_retry_after(value.decode() if isinstance(value, bytes) else value)
    return None


def _count(progress: StreamProgress, chunk: llm_pb2.GenerateChunk) -> None:
    progress.chunks += 1
    progress.add(0, chunk.text, chunk.finish_reason, len(chunk.token_ids))
    progress.done = progress.done or bool(chunk.finish_reason)


def call_metadata(
    api_key: str | None, application: str | None, idempotency_key: str | None
) -> list[tuple[str, str]]:
    """The metadata of every attempt of one call."""
    metadata = [(IDEMPOTENCY_METADATA, idempotency_key or new_idempotency_key())]
    if application:
        metadata.append(("application", application))
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    return metadata


class RetryingGrpcClient(SyncClientBase):
    """Sync client: `RetryingGrpcClient("127.0.0.1:9000", api_key=..., application="llm")`."""

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        application: str | None = None,
        policy: RetryPolicy | None = None,
        *,
        waits: Waits | None = None,
    ):
        super().__init__(policy, waits)
        self.api_key, self.application = api_key, application
        self._channel = grpc.insecure_channel(target)
        self._stub = llm_pb2_grpc.LLMStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def generate(
        self, request: llm_pb2.GenerateRequest, idempotency_key: str | None = None
    ) -> llm_pb2.GenerateResponse:
        metadata = call_metadata(self.api_key, self.application, idempotency_key)

        def attempt(timeout_s: float) -> llm_pb2.GenerateResponse:
            return self._stub.Generate(request, timeout=timeout_s, metadata=metadata)

        return call_with_retries(self.new_schedule(), attempt, classify)

    def generate_stream(
        self, request: llm_pb2.GenerateRequest, idempotency_key: str | None = None
    ) -> Iterator[llm_pb2.GenerateChunk]:
        metadata = call_metadata(self.api_key, self.application, idempotency_key)

        def attempt(timeout_s: float):
            call = self._stub.GenerateStream(request, timeout=timeout_s, metadata=metadata)
            try:
                first = next(call, None)
                if first is None:
                    raise StreamCut(f"the stream ended before {STREAM_END}")
                return call, first
            except BaseException:
                call.cancel()
                raise

        schedule = self.new_schedule()
        call, chunk = call_with_retries(schedule, attempt, classify)
        progress = StreamProgress()
        try:
            while chunk is not None:
                _count(progress, chunk)
                yield chunk
                chunk = next(call, None)
            progress.check_complete(STREAM_END)
        except (StreamCut, grpc.RpcError) as error:
            raise progress.interrupted(_described(error)) from error
        finally:
            call.cancel()


class AsyncRetryingGrpcClient(AsyncClientBase):
    """The asyncio twin of RetryingGrpcClient, on `grpc.aio`."""

    def __init__(
        self,
        target: str,
        api_key: str | None = None,
        application: str | None = None,
        policy: RetryPolicy | None = None,
        *,
        waits: Waits | None = None,
    ):
        super().__init__(policy, waits)
        self.api_key, self.application = api_key, application
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = llm_pb2_grpc.LLMStub(self._channel)

    async def aclose(self) -> None:
        await self._channel.close()

    async def generate(
        self, request: llm_pb2.GenerateRequest, idempotency_key: str | None = None
    ) -> llm_pb2.GenerateResponse:
        metadata = call_metadata(self.api_key, self.application, idempotency_key)

        async def attempt(timeout_s: float) -> llm_pb2.GenerateResponse:
            return await self._stub.Generate(request, timeout=timeout_s, metadata=metadata)

        schedule = self.new_schedule()
        return await async_call_with_retries(schedule, attempt, classify)

    async def generate_stream(
        self, request: llm_pb2.GenerateRequest, idempotency_key: str | None = None
    ) -> AsyncIterator[llm_pb2.GenerateChunk]:
        metadata = call_metadata(self.api_key, self.application, idempotency_key)

        async def attempt(timeout_s: float):
            call = self._stub.GenerateStream(request, timeout=timeout_s, metadata=metadata)
            try:
                first = await call.read()
                if first is grpc.aio.EOF:
                    raise StreamCut(f"the stream ended before {STREAM_END}")
                return call, first
            except BaseException:
                call.cancel()
                raise

        schedule = self.new_schedule()
        call, chunk = await async_call_with_retries(schedule, attempt, classify)
        progress = StreamProgress()
        try:
            while chunk is not grpc.aio.EOF:
                _count(progress, chunk)
                yield chunk
                chunk = await call.read()
            progress.check_complete(STREAM_END)
        except (StreamCut, grpc.RpcError) as error:
            raise progress.interrupted(_described(error)) from error
        finally:
            call.cancel()


def _described(error: Exception) -> Exception:
    """A gRPC error as "CODE: details" for StreamInterruptedError's reason."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return StreamCut(f"{error.code().name}: {error.details()}")
    return error
