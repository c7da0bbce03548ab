"""ReplicaHealth: the ingress's cached view of every model replica's health.

`/health` answers from it and admission sizes its bound by it
(serve_app/ingress/admission.py); neither makes a remote call per request. A background
task probes every running model replica's health check at once, each `period_s`, and
waits up to `timeout_s` for the answers: a replica that answers is healthy; one whose check
fails, or that stays silent (a zombie: alive to Ray, its process stopped or its loop
stuck), is not. A probe still unanswered is not sent again, so a zombie never piles calls
up. One zombie among healthy replicas leaves `/health` at 200; it is 503 when no replica
is healthy, or when the cache is older than its poll should ever leave it.

The replicas come from `await replicas()`: replica id -> an async probe that raises when
the replica is unhealthy (serve_app/ingress/serve_replicas.py gives Serve's running ones).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class HealthSnapshot:
    """The replicas' health as of one poll (`taken_s` on the cache's clock)."""

    taken_s: float
    num_running: int  # model replicas Serve runs
    num_healthy: int
    num_silent: int  # no answer within the timeout
    num_failed: int  # their health check raised

    def describe(self) -> str:
        """The state in words (never an exception's text: it goes to load balancers)."""
        if self.num_running == 0:
            return "no model replica is running"
        parts = [f"{self.num_healthy} of {self.num_running} model replicas healthy"]
        if self.num_silent:
            parts.append(f"{self.num_silent} not answering their health check")
        if self.num_failed:
            parts.append(f"{self.num_failed} failing their health check")
        return ", ".join(parts)


class ReplicaHealth:
    def __init__(
        self,
        replicas: Callable[[], Awaitable[Mapping[str, Probe]]],
        period_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._replicas = replicas
        self.period_s = period_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._probes: dict[str, asyncio.Future] = {}  # unanswered, by replica id
        self.snapshot: HealthSnapshot | None = None  # None until the first poll ends
        self._task: asyncio.Task | None = None

    @property
    def max_age_s(self) -> float:
        """A snapshot older than this means the poll itself is stuck."""
        return 2 * (self.period_s + self.timeout_s)

    def fresh_snapshot(self) -> HealthSnapshot | None:
        snapshot = self.snapshot
        if snapshot is None or self._clock() - snapshot.taken_s > self.max_age_s:
            return None
        return snapshot

    def num_healthy(self) -> int:
        """Healthy model replicas as of the last poll (0 while unknown or stale)."""
        snapshot = self.fresh_snapshot()
        return 0 if snapshot is None else snapshot.num_healthy

    def problem(self) -> str | None:
        """None when at least one model replica is healthy; else why not, in words."""
        snapshot = self.fresh_snapshot()
        if snapshot is None:
            if self.snapshot is None:
                return "the model replicas' health is not known yet"
            age_s = self._clock() - self.snapshot.taken_s
            return f"the model replicas' health was last known {age_s:.0f} s ago"
        return None if snapshot.num_healthy else snapshot.describe()

    async def poll(self) -> HealthSnapshot:
        """Probe every running replica once (at most `timeout_s`) and cache the result."""
        replicas = dict(await self._replicas())
        for replica_id in list(self._probes):
            if replica_id not in replicas:  # gone from Serve: stop waiting for it
                self._probes.pop(replica_id).cancel()
        for replica_id, probe in replicas.items():
            if replica_id not in self._probes:
                self._probes[replica_id] = asyncio.ensure_future(probe())
        if self._probes:
            await asyncio.wait(list(self._probes.values()), timeout=self.timeout_s)
        healthy = failed = 0
        for replica_id in replicas:
            future = self._probes[replica_id]
            if not future.done():
                continue  # silent: asked again once it answers
            del self._probes[replica_id]
            if future.cancelled() or future.exception() is not None:
                failed += 1
            else:
                healthy += 1
        silent = len(replicas) - healthy - failed
        self.snapshot = HealthSnapshot(self._clock(), len(replicas), healthy, silent, failed)
        return self.snapshot

    def start(self) -> None:
        """Poll in the background on the running event loop, from now on (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll_forever())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for future in self._probes.values():
            future.cancel()

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # keep polling; a stale cache shows on /health meanwhile
                logger.exception("polling the model replicas' health failed")
            await asyncio.sleep(self.period_s)
