"""The retry schedule on its own: full-jitter bounds, Retry-After as a floor, when a call
stops (not retryable, attempts spent, deadline), and Retry-After parsing."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import ValidationError

from serve_app.client.retry import (
    DeadlineExceededError,
    Failure,
    RequestFailedError,
    RetryPolicy,
    RetrySchedule,
    Waits,
    parse_retry_after,
    retry_after_from_details,
)

POLICY = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=4, multiplier=2, max_attempts=10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def schedule_with(random_value: float, policy: RetryPolicy = POLICY, clock=None) -> RetrySchedule:
    return RetrySchedule(policy, Waits(clock=clock or FakeClock(), random=lambda: random_value))


def retryable(retry_after_s: float | None = None) -> Failure:
    return Failure(True, RequestFailedError("busy", 503), retry_after_s)


def waits_of(schedule: RetrySchedule, count: int, failure: Failure) -> list[float]:
    waits = []
    for _ in range(count):
        schedule.start_attempt()
        waits.append(schedule.wait_after(failure))
    return waits


def test_backoff_caps_grow_exponentially_up_to_the_maximum():
    assert [POLICY.backoff_cap_s(i) for i in range(6)] == [0.5, 1, 2, 4, 4, 4]


def test_full_jitter_spans_zero_to_the_cap():
    almost_one = 1 - 1e-12
    assert waits_of(schedule_with(0.0), 5, retryable()) == [0.0] * 5
    highest = waits_of(schedule_with(almost_one), 5, retryable())
    assert highest == pytest.approx([0.5, 1, 2, 4, 4])


def test_full_jitter_with_a_real_random_source_stays_in_bounds_and_spreads():
    generator = random.Random(0)
    policy = RetryPolicy(initial_backoff_s=1, max_backoff_s=1, max_attempts=10_000)
    schedule = RetrySchedule(policy, Waits(clock=FakeClock(), random=generator.random))
    samples = waits_of(schedule, 2000, retryable())
    assert all(0 <= wait < 1 for wait in samples)
    assert statistics.mean(samples) == pytest.approx(0.5, abs=0.03)  # uniform: mean cap/2
    assert min(samples) < 0.01 and max(samples) > 0.99


def test_retry_after_is_a_floor_under_the_jitter():
    assert waits_of(schedule_with(0.0), 1, retryable(retry_after_s=3)) == [3]
    assert waits_of(schedule_with(0.99), 3, retryable(retry_after_s=0.1))[2] == pytest.approx(1.98)


def test_a_retry_after_beyond_the_cap_ends_the_call():
    policy = RetryPolicy(max_retry_after_s=5)
    schedule = schedule_with(0.0, policy)
    schedule.start_attempt()
    with pytest.raises(RequestFailedError):
        schedule.wait_after(retryable(retry_after_s=6))


def test_not_retryable_and_spent_attempts_raise_the_error_with_its_attempt_count():
    schedule = schedule_with(0.5)
    schedule.start_attempt()
    bad_request = Failure(False, RequestFailedError("prompt: empty", 400))
    with pytest.raises(RequestFailedError) as failure:
        schedule.wait_after(bad_request)
    assert failure.value.attempts == 1
    schedule = schedule_with(0.5, RetryPolicy(max_attempts=2))
    waits_of(schedule, 1, retryable())
    schedule.start_attempt()
    with pytest.raises(RequestFailedError) as failure:
        schedule.wait_after(retryable())
    assert failure.value.attempts == 2


def test_a_wait_that_would_pass_the_deadline_ends_the_call_now():
    clock = FakeClock()
    schedule = schedule_with(0.0, RetryPolicy(total_timeout_s=10), clock)
    schedule.start_attempt()
    clock.now += 8
    with pytest.raises(DeadlineExceededError, match="deadline of 10 s"):
        schedule.wait_after(retryable(retry_after_s=2))
    clock.now += 3
    with pytest.raises(DeadlineExceededError, match="after 1 attempt"):
        schedule.start_attempt()


def test_policy_errors_name_the_field():
    with pytest.raises(ValidationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(
        ValidationError, match=r"initial_backoff_s .* must not exceed max_backoff_s"
    ):
        RetryPolicy(initial_backoff_s=10, max_backoff_s=1)


def test_retry_after_values():
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("2", now) == 2
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(format_datetime(now + timedelta(seconds=7), usegmt=True), now) == 7
    assert parse_retry_after(format_datetime(now - timedelta(seconds=7), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert retry_after_from_details("the replicas' queue is full (retry after 2 s)") == 2
    assert retry_after_from_details("prompt: too long") is None
