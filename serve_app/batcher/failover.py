"""Failover: which batch-call failures the batcher resumes elsewhere, and when.

A request whose replica died, was drained, or whose call failed with a replica or actor
error is resumed on another replica with `prompt + tokens generated so far` (the engine
treats those as its output: LLMEngine.add_request), so its caller's stream continues
with no gap and no repeated token. A request the engine rejected (a ValueError such as
RequestError) is never retried. Attempts are bounded; each waits a backoff with full
jitter so that a burst of failed requests does not hammer the replica being replaced, and
goes to a replica that has not failed the request yet while there is one (the call's
RoutingHint, serve_app/routing_hint.py): a replica whose engine died while its actor lives
stays routable until Serve's next health check, and would take every attempt.
"""

from __future__ import annotations

import random

from ray.serve.exceptions import BackPressureError

from serve_app.batch_call import REPLICA_GONE, BatchStreamEndedError
from serve_app.engine.errors import TensorParallelError
from serve_app.messages import ReplicaDrainingError

REPLICA_FAILURES = (
    *REPLICA_GONE,
    TensorParallelError,  # one of its tensor-parallel ranks died
    BackPressureError,  # every replica's queue is full right now
)


def is_replica_failure(error: BaseException) -> bool:
    """Whether a batch call's error is the replica's fault, not the request's."""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the replica's error
    return isinstance(error, REPLICA_FAILURES) or isinstance(cause, REPLICA_FAILURES)


def is_drain(error: BaseException) -> bool:
    """Whether the replica gave the request back on purpose (a drain), not by crashing."""
    return isinstance(error, ReplicaDrainingError | BatchStreamEndedError)


def resume_reason(error: BaseException) -> str:
    """Why a replica failure is resumed: `node_drained` (handed back), `overloaded` (every
    replica's queue was full: a retry, no replica failed) or `replica_died`. The first and
    last are failovers (metrics.FAILOVER_REASONS), `overloaded` a retry (RETRY_REASONS)."""
    cause = getattr(error, "cause", None) or error
    if is_drain(error):
        return "node_drained"
    if isinstance(error, BackPressureError) or isinstance(cause, BackPressureError):
        return "overloaded"
    return "replica_died"


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max_s, base_s * 2**(attempt - 1))], attempt >= 1."""
    return rng.uniform(0.0, min(max_s, base_s * 2 ** (attempt - 1)))
