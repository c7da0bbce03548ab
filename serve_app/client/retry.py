"""When and how long to retry: the policy, one call's schedule, and the errors callers see.

Pure Python, shared by the HTTP and gRPC clients (sync and async). A call makes attempts
until one succeeds, a failure is not safe to retry, `max_attempts` are spent, or the next
wait would pass the call's total deadline. Waits are exponential backoff with full jitter
(uniform in [0, min(max_backoff_s, initial_backoff_s * multiplier**retry)]), and never
shorter than the server's Retry-After.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

# "(retry after 2 s)": how the app's gRPC errors carry Retry-After in their details.
RETRY_AFTER_DETAILS = re.compile(r"\(retry after (\d+(?:\.\d+)?) s\)\s*$")


class RetryPolicy(BaseModel):
    """How a client retries; invalid values raise pydantic's ValidationError naming the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(5, ge=1, description="attempts per call, the first included")
    initial_backoff_s: float = Field(0.5, gt=0, description="backoff cap of the first retry")
    max_backoff_s: float = Field(8.0, gt=0, description="largest backoff cap")
    multiplier: float = Field(2.0, ge=1, description="growth of the backoff cap per retry")
    total_timeout_s: float = Field(
        120.0, gt=0, description="deadline of the whole call: attempts, waits and the stream"
    )
    max_retry_after_s: float = Field(
        60.0, ge=0, description="a longer Retry-After ends the call instead of waiting"
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetryPolicy:
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(
                f"initial_backoff_s ({self.initial_backoff_s}) must not exceed "
                f"max_backoff_s ({self.max_backoff_s})"
            )
        return self

    def backoff_cap_s(self, retry_index: int) -> float:
        """The upper end of the jittered wait before retry number `retry_index` (0-based)."""
        try:
            return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry_index)
        except OverflowError:  # a long retry run: the cap has long been reached
            return self.max_backoff_s


class ClientError(Exception):
    """Base of every error the retrying clients raise."""


class RequestFailedError(ClientError):
    """The call failed for good: a status not safe to retry, or every attempt failed.

    `status` is the HTTP status (int), the gRPC `StatusCode`, or None when no response came
    (a connection error).
    """

    def __init__(self, message: str, status: object = None, attempts: int = 1):
        super().__init__(message)
        self.message = message
        self.status = status
        self.attempts = attempts

    def __str__(self) -> str:
        return f"{self.message} (status {self.status}, {self.attempts} attempt(s))"


class DeadlineExceededError(ClientError):
    """The call's total deadline (`RetryPolicy.total_timeout_s`) passed before it succeeded."""


class StreamInterruptedError(ClientError):
    """A stream ended before its end: the output so far is incomplete, never silently cut.

    `chunks`, `chars` and `tokens` count what reached the caller before the cut (tokens only
    where the protocol carries token ids).
    """

    def __init__(self, reason: str, chunks: int, chars: int, tokens: int | None):
        counted = f"{chunks} chunk(s), {chars} character(s)"
        if tokens is not None:
            counted += f", {tokens} token(s)"
        super().__init__(f"the stream was cut after {counted}: {reason}")
        self.reason = reason
        self.chunks = chunks
        self.chars = chars
        self.tokens = tokens


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt, classified: whether to retry, and the error if we stop here."""

    retryable: bool
    error: ClientError
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Waits:
    """The clock, sleep and random source of a client; tests pass fakes."""

    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] | None = None  # None: asyncio.sleep
    random: Callable[[], float] = random.random  # uniform in [0, 1)


class RetrySchedule:
    """One call's attempts against its policy and deadline."""

    def __init__(self, policy: RetryPolicy, waits: Waits):
        self.policy = policy
        self.waits = waits
        self.deadline = waits.clock() + policy.total_timeout_s
        self.attempts = 0

    def remaining_s(self) -> float:
        return self.deadline - self.waits.clock()

    def start_attempt(self) -> float:
        """Count an attempt; the seconds it may take (its timeout)."""
        remaining = self.remaining_s()
        if remaining <= 0:
            raise DeadlineExceededError(self._deadline_message())
        self.attempts += 1
        return remaining

    def wait_after(self, failure: Failure) -> float:
        """The seconds to wait before the next attempt, or raise the call's final error."""
        error = failure.error
        if isinstance(error, RequestFailedError):
            error.attempts = self.attempts
        if not failure.retryable or self.attempts >= self.policy.max_attempts:
            raise error
        jittered = self.waits.random() * self.policy.backoff_cap_s(self.attempts - 1)
        retry_after = failure.retry_after_s or 0.0
        if retry_after > self.policy.max_retry_after_s:
            raise error
        wait_s = max(jittered, retry_after)
        if wait_s >= self.remaining_s():
            raise DeadlineExceededError(self._deadline_message(error)) from error
        return wait_s

    def check_deadline(self) -> None:
        if self.remaining_s() <= 0:
            raise DeadlineExceededError(self._deadline_message())

    def _deadline_message(self, last: Exception | None = None) -> str:
        message = (
            f"the call's deadline of {self.policy.total_timeout_s:g} s "
            f"(total_timeout_s) passed after {self.attempts} attempt(s)"
        )
        return f"{message}; last error: {last}" if last is not None else message


def new_idempotency_key() -> str:
    """One key per logical request, sent unchanged with each of its attempts."""
    return uuid.uuid4().hex


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = now or datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def retry_after_from_details(details: str | None) -> float | None:
    """The "(retry after N s)" suffix of the app's gRPC error details, in seconds."""
    match = RETRY_AFTER_DETAILS.search(details or "")
    return float(match.group(1)) if match else None


def call_with_retries(
    schedule: RetrySchedule,
    attempt: Callable[[float], T],
    classify: Callable[[Exception], Failure | None],
) -> T:
    """Run `attempt(timeout_s)` until it returns; `classify` turns what it raised into a
    Failure (None: not ours to handle, re-raised as is)."""
    while True:
        timeout_s = schedule.start_attempt()
        try:
            return attempt(timeout_s)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
            schedule.waits.sleep(schedule.wait_after(failure))


async def async_call_with_retries(
    schedule: RetrySchedule,
    attempt: Callable[[float], Awaitable[T]],
    classify: Callable[[Exception], Failure | None],
) -> T:
    """`call_with_retries` for coroutines."""
    import asyncio

    sleep = schedule.waits.async_sleep or asyncio.sleep
    while True:
        timeout_s = schedule.start_attempt()
        try:
            return await attempt(timeout_s)
        except Exception as error:
            failure = classify(error)
            if failure is None:
                raise
            await sleep(schedule.wait_after(failure))
