"""Admission control: how many requests one ingress replica holds before it answers 429.

Every hop below the ingress carries many requests per Serve call, so Serve's per-call
limits no longer bound requests; this does. An ingress replica holds at most its share
(1 / ingress.num_replicas) of the app's bound: what the model replicas run at once
(engine.max_num_seqs x replicas) plus a queue of what they are measured to finish within
`admission.max_queue_wait_s`, kept between `min_queued_requests` and
`max_queued_requests` (serve_app/config.py, AdmissionSettings). A request beyond it gets
429 + Retry-After at once instead of waiting behind work that cannot start soon.
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
    def __init__(self, config: AppConfig, clock: Callable[[], float] = time.monotonic) -> None:
        settings, replicas = config.admission, config.ingress.num_replicas
        self.fixed_bound = (
            None if settings.max_requests is None else _share(settings.max_requests, replicas)
        )
        self.running_capacity = _share(config.running_capacity, replicas)
        self.min_queued = _share(settings.min_queued_requests, replicas)
        self.max_queued = _share(settings.max_queued_requests, replicas)
        self.max_queue_wait_s = settings.max_queue_wait_s
        self.num_held = 0
        self._clock = clock
        self._finished_s: deque[float] = deque()  # finish times within RATE_WINDOW_S

    def finish_rate_per_s(self) -> float:
        horizon = self._clock() - RATE_WINDOW_S
        while self._finished_s and self._finished_s[0] < horizon:
            self._finished_s.popleft()
        return len(self._finished_s) / RATE_WINDOW_S

    def bound(self) -> int:
        if self.fixed_bound is not None:
            return self.fixed_bound
        measured = int(self.finish_rate_per_s() * self.max_queue_wait_s)
        return self.running_capacity + min(self.max_queued, max(self.min_queued, measured))

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
