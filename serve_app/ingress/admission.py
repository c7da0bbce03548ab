"""Admission control: how many requests one ingress replica holds before it answers 429.

Every hop below the ingress carries many requests per Serve call, so Serve's per-call
limits no longer bound requests; this does. An ingress replica holds at most its share
(1 / ingress.num_replicas) of the app's bound: what the model replicas serving now run at
once (engine.max_num_seqs x those replicas) plus a queue of what they are measured to
finish within `admission.max_queue_wait_s`, kept between `min_queued_requests` and
`max_queued_requests` (serve_app/config.py, AdmissionSettings). Those two are for the app
at `max_replicas`; with fewer replicas serving, each shrinks in proportion. The number
serving comes from the ingress's cached replica health (serve_app/ingress/replica_health.py)
and counts as at least one replica (a cold start or a brief outage queues a replica's worth
instead of refusing everything) and at most `max_replicas`, the ceiling Serve's own limits
are derived from (serve_app/app.py), so Serve never refuses what admission let in. A request
beyond the bound gets 429 + Retry-After at once instead of waiting behind work that cannot
start soon.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from serve_app.config import AppConfig
from serve_app.engine.sampling_params import SamplingParams
from serve_app.ingress.errors import overloaded
from serve_app.ingress.token_source import TokenStreamer
from serve_app.messages import TokenChunk

RATE_WINDOW_S = 60.0  # finished requests counted over this much recent time


def _share(value: int, num_replicas: int) -> int:
    return math.ceil(value / num_replicas)


class Admission:
    """`serving_replicas()`: how many model replicas serve now (read on every admission, so
    it must be cheap: a cached value); by default all `max_replicas`."""

    def __init__(
        self,
        config: AppConfig,
        clock: Callable[[], float] = time.monotonic,
        serving_replicas: Callable[[], int] | None = None,
    ) -> None:
        settings, replicas = config.admission, config.ingress.num_replicas
        self.fixed_bound = (
            None if settings.max_requests is None else _share(settings.max_requests, replicas)
        )
        self.max_replicas = config.replica.max_replicas
        self._serving_replicas = serving_replicas or (lambda: self.max_replicas)
        self._seqs_per_replica = config.engine.max_num_seqs
        self._min_queued_all = settings.min_queued_requests  # at max_replicas
        self._max_queued_all = settings.max_queued_requests
        self._num_ingress = replicas
        self.max_queue_wait_s = settings.max_queue_wait_s
        self.num_held = 0
        self._clock = clock
        self._finished_s: deque[float] = deque()  # finish times within RATE_WINDOW_S

    def num_replicas(self) -> int:
        """The model replicas the bound counts: those serving, within [1, max_replicas]."""
        return min(self.max_replicas, max(1, self._serving_replicas()))

    def _scaled(self, value: int, num_replicas: int) -> int:
        """This ingress's share of `value` (an app-wide figure at max_replicas) for
        `num_replicas` serving."""
        return math.ceil(value * num_replicas / (self.max_replicas * self._num_ingress))

    def finish_rate_per_s(self) -> float:
        horizon = self._clock() - RATE_WINDOW_S
        while self._finished_s and self._finished_s[0] < horizon:
            self._finished_s.popleft()
        return len(self._finished_s) / RATE_WINDOW_S

    def bound(self) -> int:
        if self.fixed_bound is not None:
            return self.fixed_bound
        num_replicas = self.num_replicas()
        running = _share(self._seqs_per_replica * num_replicas, self._num_ingress)
        min_queued = self._scaled(self._min_queued_all, num_replicas)
        max_queued = self._scaled(self._max_queued_all, num_replicas)
        measured = int(self.finish_rate_per_s() * self.max_queue_wait_s)
        return running + min(max_queued, max(min_queued, measured))

    def try_admit(self) -> bool:
        if self.num_held >= self.bound():
            return False
        self.num_held += 1
        return True

    def release(self) -> None:
        self.num_held -= 1
        self._finished_s.append(self._clock())


class AdmittedTokenStreamer:
    """A TokenStreamer that admits each request through `Admission` first (429 if full)."""

    def __init__(self, inner: TokenStreamer, admission: Admission, retry_after_s: int) -> None:
        self._inner = inner
        self.admission = admission
        self._retry_after_s = retry_after_s

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]:
        if not self.admission.try_admit():
            raise overloaded(
                self._retry_after_s,
                f"the server holds {self.admission.num_held} requests, its limit; "
                "retry after a moment",
            )
        try:
            async for chunk in self._inner.stream(prompt_ids, params, request_id):
                yield chunk
        finally:
            self.admission.release()
