"""Retrying clients for the app's HTTP (OpenAI-compatible) and gRPC APIs, sync and async.

Exponential backoff with full jitter, at least the server's Retry-After, retries of what is
safe only (connection errors, HTTP 429/503, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED), one
idempotency key per call, a total deadline, and streams that end complete or raise
`StreamInterruptedError` (never a silently truncated output). See the README's "Retrying
client" section.
"""

from serve_app.client.grpc_client import AsyncRetryingGrpcClient, RetryingGrpcClient
from serve_app.client.http_client import AsyncRetryingHttpClient, RetryingHttpClient
from serve_app.client.retry import (
    ClientError,
    DeadlineExceededError,
    RequestFailedError,
    RetryPolicy,
    StreamInterruptedError,
    Waits,
)

__all__ = [
    "AsyncRetryingGrpcClient",
    "AsyncRetryingHttpClient",
    "ClientError",
    "DeadlineExceededError",
    "RequestFailedError",
    "RetryPolicy",
    "RetryingGrpcClient",
    "RetryingHttpClient",
    "StreamInterruptedError",
    "Waits",
]
