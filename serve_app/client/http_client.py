"""Retrying HTTP clients (sync and async) for the app's OpenAI-compatible API, on httpx.

`post` returns the JSON body; `stream` yields the SSE events of a `"stream": true` request.
Every attempt of one call sends the same `Idempotency-Key`. Retried: connection errors, 429
and 503 (after at least their Retry-After); anything else (400, 401, 404, 413, 500, ...)
fails at once with `RequestFailedError`. A stream is retried only while nothing has reached
the caller; a cut after that raises `StreamInterruptedError` (where a resume will go).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from serve_app.client.base import AsyncClientBase, SyncClientBase
from serve_app.client.retry import (
    ClientError,
    Failure,
    RequestFailedError,
    RetryPolicy,
    Waits,
    async_call_with_retries,
    call_with_retries,
    new_idempotency_key,
    parse_retry_after,
)
from serve_app.client.stream_progress import (
    RETRYABLE_ERROR_TYPES,
    StreamCut,
    StreamProgress,
    parse_sse_line,
)

RETRYABLE_STATUSES = frozenset({429, 503})
IDEMPOTENCY_HEADER = "Idempotency-Key"
SSE_END = "data: [DONE]"
# No usable answer came: refused, reset, closed mid-response, or the attempt's time ran out.
# (A bad URL or a local protocol error is not among them: trying again cannot help.)
NO_ANSWER_ERRORS = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.TimeoutException)


class HttpStatusError(Exception):
    """An attempt got an error status (internal: classified into a Failure)."""

    def __init__(self, response: httpx.Response):
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200] or response.reason_phrase
        super().__init__(message)
        self.status = response.status_code
        self.retry_after_s = parse_retry_after(response.headers.get("Retry-After"))


def classify(error: Exception) -> Failure | None:
    """Whether a failed attempt is safe to retry, and the error the call ends with if not."""
    if isinstance(error, HttpStatusError):
        failed = RequestFailedError(str(error), error.status)
        return Failure(error.status in RETRYABLE_STATUSES, failed, error.retry_after_s)
    if isinstance(error, StreamCut):  # before anything reached the caller
        retryable = error.error_type is None or error.error_type in RETRYABLE_ERROR_TYPES
        return Failure(retryable, RequestFailedError(str(error), error.error_type))
    if isinstance(error, NO_ANSWER_ERRORS):
        return Failure(True, RequestFailedError(f"no response: {error!r}"))
    return None


def request_parts(
    base_url: str, api_key: str | None, path: str, idempotency_key: str | None
) -> tuple[str, dict[str, str]]:
    """The URL and headers of every attempt of one call."""
    headers = {IDEMPOTENCY_HEADER: idempotency_key or new_idempotency_key()}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return base_url.rstrip("/") + "/" + path.lstrip("/"), headers


class RetryingHttpClient(SyncClientBase):
    """Sync client: `RetryingHttpClient("http://127.0.0.1:8000/v1", api_key=...)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        *,
        waits: Waits | None = None,
        http: httpx.Client | None = None,
    ):
        super().__init__(policy, waits)
        self.base_url, self.api_key = base_url, api_key
        self._http = http or httpx.Client()

    def close(self) -> None:
        self._http.close()

    def post(self, path: str, body: dict[str, Any], idempotency_key: str | None = None) -> dict:
        url, headers = request_parts(self.base_url, self.api_key, path, idempotency_key)

        def attempt(timeout_s: float) -> dict:
            response = self._http.post(url, json=body, headers=headers, timeout=timeout_s)
            if response.status_code >= 400:
                raise HttpStatusError(response)
            return response.json()

        return call_with_retries(self.new_schedule(), attempt, classify)

    def stream(
        self, path: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> Iterator[dict]:
        url, headers = request_parts(self.base_url, self.api_key, path, idempotency_key)
        schedule = self.new_schedule()

        def attempt(timeout_s: float):
            request = self._http.build_request(
                "POST", url, json={**body, "stream": True}, headers=headers, timeout=timeout_s
            )
            response = self._http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    response.read()
                    raise HttpStatusError(response)
                progress, lines = StreamProgress(), response.iter_lines()
                first = _next_event(lines, progress)
                if first is None:
                    progress.check_complete(SSE_END)  # an empty but whole stream is fine
                return response, lines, progress, first
            except BaseException:
                response.close()
                raise

        response, lines, progress, event = call_with_retries(schedule, attempt, classify)
        try:
            while event is not None:
                yield event
                schedule.check_deadline()
                event = _next_event(lines, progress)
            progress.check_complete(SSE_END)
        except (StreamCut, ClientError, httpx.HTTPError) as error:
            raise progress.interrupted(error) from error
        finally:
            response.close()


class AsyncRetryingHttpClient(AsyncClientBase):
    """The asyncio twin of RetryingHttpClient: `await post(...)`, `async for ... in stream(...)`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        policy: RetryPolicy | None = None,
        *,
        waits: Waits | None = None,
        http: httpx.AsyncClient | None = None,
    ):
        super().__init__(policy, waits)
        self.base_url, self.api_key = base_url, api_key
        self._http = http or httpx.AsyncClient()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def post(
        self, path: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict:
        url, headers = request_parts(self.base_url, self.api_key, path, idempotency_key)

        async def attempt(timeout_s: float) -> dict:
            response = await self._http.post(url, json=body, headers=headers, timeout=timeout_s)
            if response.status_code >= 400:
                raise HttpStatusError(response)
            return response.json()

        schedule = self.new_schedule()
        return await async_call_with_retries(schedule, attempt, classify)

    async def stream(
        self, path: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> AsyncIterator[dict]:
        url, headers = request_parts(self.base_url, self.api_key, path, idempotency_key)
        schedule = self.new_schedule()

        async def attempt(timeout_s: float):
            request = self._http.build_request(
                "POST", url, json={**body, "stream": True}, headers=headers, timeout=timeout_s
            )
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise HttpStatusError(response)
                progress, lines = StreamProgress(), response.aiter_lines()
                first = await _anext_event(lines, progress)
                if first is None:
                    progress.check_complete(SSE_END)
                return response, lines, progress, first
            except BaseException:
                await response.aclose()
                raise

        response, lines, progress, event = await async_call_with_retries(
            schedule, attempt, classify
        )
        try:
            while event is not None:
                yield event
                schedule.check_deadline()
                event = await _anext_event(lines, progress)
            progress.check_complete(SSE_END)
        except (StreamCut, ClientError, httpx.HTTPError) as error:
            raise progress.interrupted(error) from error
        finally:
            await response.aclose()


def _next_event(lines: Iterator[str], progress: StreamProgress) -> dict | None:
    for line in lines:
        event = parse_sse_line(line, progress)
        if event is not None or progress.done:
            return event
    return None


async def _anext_event(lines: AsyncIterator[str], progress: StreamProgress) -> dict | None:
    async for line in lines:
        event = parse_sse_line(line, progress)
        if event is not None or progress.done:
            return event
    return None
