"""The adaptive micro-batching policy: when to forward the waiting requests, and how many.

Pure Python (no ray, no asyncio; pydantic validates the knobs): the batcher deployment
asks `decide()` on every arrival and when the wait it was told to do runs out; tests drive
it with a simulated clock.

The rule, in one paragraph. Requests that arrive close together are worth one call to a
model replica, but waiting costs time-to-first-token (TTFT). The policy estimates the
arrival rate (arrivals over the last `RATE_HORIZON_WINDOWS` × max_wait) and the replica's
forward latency (forward call to first token, a moving average). The *window* is how long
the oldest waiting request may be held: `min(max_wait, target_ttft - forward_latency)`,
never negative, so holding a request never pushes its expected TTFT past the target. The
*target batch size* is `1 +` the arrivals expected within one window, capped at
`max_batch_size`. A batch is flushed as soon as it reaches that size, when the oldest
request has waited a whole window, or when arrivals stopped (no arrival for a few expected
gaps). Under light traffic the target is 1, so a request is forwarded at once; under a
burst the rate climbs and batches grow, up to what the window allows.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from serve_app.validation_errors import problem_lines

# A gap this many times the expected one means the burst is over: flush what is waiting
# instead of holding it for the rest of the window. (Under Poisson arrivals a gap that long
# comes once in e**10, about 22000 arrivals, so a running burst is not cut short.)
ARRIVALS_STOPPED_GAPS = 10.0
# The arrival rate is counted over this many max_wait windows: long enough that a chance
# cluster of two or three requests under light load does not look like a burst, short
# enough that a burst is seen within a few windows.
RATE_HORIZON_WINDOWS = 10.0
# A wait shorter than this is no wait (below event-loop timer resolution); it also keeps
# float rounding from asking for an endless series of near-zero waits.
MIN_WAIT_S = 50e-6


class BatchPolicyConfigError(ValueError):
    """A batch policy knob is invalid; the message names the field and the allowed range."""


class BatchPolicyConfig(BaseModel):
    """The policy's knobs: the Batcher deployment's `user_config`, validated once here.

    A pydantic model because it is read from config files (the app's `batcher.policy` and a
    Serve config's `deployments: [{name: Batcher, user_config: ...}]`); the preflight
    (serve_app/deploy_overrides.py) and `Batcher.reconfigure` validate with this same model.
    Absent keys keep their defaults; unknown keys and values out of range are errors.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target_ttft_ms: float = Field(200.0, gt=0, le=600_000)  # waiting must not push TTFT past
    max_batch_size: int = Field(32, ge=1, le=4096)  # requests forwarded in one call, at most
    max_wait_ms: float = Field(10.0, ge=0, le=60_000)  # longest a request is held
    smoothing: float = Field(0.2, gt=0, le=1)  # weight of the newest forward-latency sample

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_bool(cls, value: object) -> object:
        """YAML's `true` is not a number here, though pydantic would read it as 1."""
        if isinstance(value, bool):
            raise ValueError("must be a number")
        return value

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, object]) -> BatchPolicyConfig:
        """Knobs from a mapping; BatchPolicyConfigError names every bad field (one per line)."""
        if not isinstance(user_config, Mapping):
            raise BatchPolicyConfigError(
                f"a mapping of {', '.join(cls.model_fields)} expected, got {user_config!r}"
            )
        try:
            return cls.model_validate(dict(user_config))
        except ValidationError as error:
            raise BatchPolicyConfigError("; ".join(problem_lines(error, cls))) from None

    def to_dict(self) -> dict[str, object]:
        return self.model_dump()


@dataclass(frozen=True, slots=True)
class BatchDecision:
    """What to do now: forward `batch_size` of the oldest requests, or wait.

    `batch_size == 0` means wait: until the next arrival, or at most `wait_s` seconds
    (None: nothing is waiting, so only an arrival matters), then ask again. After a flush,
    ask again at once: more than `max_batch_size` requests may have been waiting.
    """

    batch_size: int
    wait_s: float | None

    @property
    def flush(self) -> bool:
        return self.batch_size > 0


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """The policy's current estimates, for metrics and tests."""

    arrival_rate_per_s: float
    forward_latency_s: float | None
    window_s: float
    target_batch_size: int


class AdaptiveBatchPolicy:
    """Decides, from the queue state and recent history, when to flush a batch and its size."""

    def __init__(
        self,
        config: BatchPolicyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or BatchPolicyConfig()
        self._clock = clock
        self._arrivals_s: deque[float] = deque()  # arrival times within the rate horizon
        self._forward_latency_s: float | None = None  # moving average, forward -> first token

    def reconfigure(self, config: BatchPolicyConfig | Mapping[str, object]) -> None:
        """Swap the knobs live; the learned estimates are kept."""
        if not isinstance(config, BatchPolicyConfig):
            config = BatchPolicyConfig.from_user_config(config)
        self.config = config

    # ---- observations -----------------------------------------------------------------
    def record_arrival(self, count: int = 1) -> None:
        """`count` requests joined the queue now."""
        now = self._clock()
        self._arrivals_s.extend([now] * count)

    def record_forward_latency(self, seconds: float) -> None:
        """A forwarded batch produced its first token `seconds` after the call started."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"forward latency must be a finite number >= 0, got {seconds!r}")
        self._forward_latency_s = self._smooth(self._forward_latency_s, seconds)

    # ---- the decision -----------------------------------------------------------------
    def window_s(self) -> float:
        """How long the oldest request may be held: within max_wait and the TTFT target."""
        ttft_slack = self.config.target_ttft_ms / 1000.0 - (self._forward_latency_s or 0.0)
        return max(0.0, min(self.config.max_wait_ms / 1000.0, ttft_slack))

    def arrival_rate_per_s(self) -> float:
        """Arrivals per second over the recent horizon."""
        horizon_s = RATE_HORIZON_WINDOWS * self.config.max_wait_ms / 1000.0
        now = self._clock()
        while self._arrivals_s and self._arrivals_s[0] < now - horizon_s:
            self._arrivals_s.popleft()
        return len(self._arrivals_s) / horizon_s if horizon_s > 0 else 0.0

    def target_batch_size(self) -> int:
        """One plus the arrivals expected within one window, within [1, max_batch_size]."""
        expected = self.arrival_rate_per_s() * self.window_s()
        return max(1, min(self.config.max_batch_size, math.floor(1 + expected)))

    def decide(self, num_waiting: int, oldest_age_s: float) -> BatchDecision:
        """Flush now or wait, given how many requests wait and how long the oldest has."""
        assert num_waiting >= 0 and oldest_age_s >= 0, (num_waiting, oldest_age_s)
        if num_waiting == 0:
            return BatchDecision(batch_size=0, wait_s=None)
        flush_all = BatchDecision(min(num_waiting, self.config.max_batch_size), wait_s=None)
        if num_waiting >= self.target_batch_size():
            return flush_all
        # The target is > 1 here, so the rate is > 0 and arrivals were seen recently.
        expected_gap_s = 1.0 / self.arrival_rate_per_s()
        since_last_arrival = self._clock() - self._arrivals_s[-1]
        wait = min(
            self.window_s() - oldest_age_s,
            ARRIVALS_STOPPED_GAPS * expected_gap_s - since_last_arrival,
        )
        if wait < MIN_WAIT_S:
            return flush_all
        return BatchDecision(batch_size=0, wait_s=wait)

    def snapshot(self) -> PolicySnapshot:
        return PolicySnapshot(
            arrival_rate_per_s=self.arrival_rate_per_s(),
            forward_latency_s=self._forward_latency_s,
            window_s=self.window_s(),
            target_batch_size=self.target_batch_size(),
        )

    def _smooth(self, average: float | None, sample: float) -> float:
        if average is None:
            return sample
        weight = self.config.smoothing
        return weight * sample + (1.0 - weight) * average
