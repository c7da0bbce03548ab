"""ModelReplica: the Serve deployment that owns an AsyncEngine and streams token ids.

It sees token ids only (the ingress tokenizes). Its one generating method is
`generate_batch(requests)`: many requests in one call, answered by one stream of
BatchMessages, one per engine step for the whole batch (serve_app/replica/batch_runner.py).
Its caller is the micro-batcher, or the ingress when the batcher is off. Single requests
of a batch are aborted through this replica's AbortChannel (serve_app/abort_channel.py),
whose name rides in the stream's first message; cancelling the call aborts the whole
batch. On a draining node it hands its requests back before the deadline
(serve_app/replica/drain.py); callers route around it meanwhile
(serve_app/replica/router.py). Deployment options (replicas, resources, limits,
health-check timeouts) come from `serve_app.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict

import ray

from serve_app.abort_channel import LazyAbortListener
from serve_app.autoscaling import EngineLoadReporter
from serve_app.config import AppConfig
from serve_app.engine.async_engine import AsyncEngine
from serve_app.messages import BatchMessage, BatchRequest
from serve_app.metrics import ReplicaMetrics, report_periodically
from serve_app.replica.batch_runner import BatchRunner
from serve_app.replica.drain import DrainHandback
from serve_app.replica.ray_executor import make_llm_engine
from serve_app.routing_hint import RoutingHint


class ModelReplica:
    def __init__(self, config: AppConfig) -> None:
        # TP > 1: ranks 1..N-1 are Ray actors in this replica's placement group.
        self.engine = AsyncEngine(
            config.engine,
            stall_timeout_s=config.replica.stall_timeout_s,
            build_engine=make_llm_engine,
        )
        self.metrics = ReplicaMetrics()
        self._metrics_task: asyncio.Task | None = None
        self.num_cancelled_streams = 0  # callers that left before their request finished
        self.stream_interval_tokens = config.replica.stream_interval_tokens
        self.batches = BatchRunner(
            self.engine,
            self.stream_interval_tokens,
            on_cancelled=self._count_cancelled,
            stream_interval_s=config.replica.stream_interval_ms / 1000,
        )
        self._abort_listener = LazyAbortListener(on_abort=self.batches.abort_requests)
        self._drain = DrainHandback(
            ray.get_runtime_context().get_node_id() if ray.is_initialized() else "",
            config.replica.drain_handback_s,
            self.batches.hand_back,
            self.batches.resume,
        )
        self._drain_task: asyncio.Task | None = None
        self.load = EngineLoadReporter()  # what the autoscaling policy reads (TTFT, KV, queue)

    async def generate_batch(
        self, requests: list[BatchRequest], routing: RoutingHint | None = None
    ) -> AsyncIterator[BatchMessage]:
        """Run many requests in one stream (the batcher's call, or the ingress's). `routing`
        is for the callers' router (serve_app/routing_hint.py); nothing here reads it."""
        self._start_metrics()
        if self._drain_task is None:  # started with the first batch, on Serve's loop
            self._drain_task = asyncio.get_running_loop().create_task(self._drain.watch())
        batch = self.batches.run(requests, self._abort_listener.channel_name())
        timed = self.load.timed_batch(batch, [request.request_id for request in requests])
        async with aclosing(timed) as messages:
            async for message in messages:
                yield message

    def _count_cancelled(self, count: int) -> None:
        self.num_cancelled_streams += count

    async def stats(self) -> dict:
        """Engine counters (running/waiting requests, KV blocks) plus open streams."""
        return {
            **asdict(self.engine.stats()),
            "num_active_streams": self.engine.num_active_streams,
            "num_cancelled_streams": self.num_cancelled_streams,
        }

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Called by Serve: this replica's engine load, for serve_app/autoscaling.py's policy."""
        return self.load.report(self.engine.stats())

    async def check_health(self) -> None:
        """Called by Serve; raising marks the replica unhealthy and gets it replaced."""
        self.engine.check_health()

    def __del__(self) -> None:
        # getattr: __init__ may have failed before setting it (a TP rank that did not start).
        for task in (getattr(self, "_metrics_task", None), getattr(self, "_drain_task", None)):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            self.engine.shutdown()

    def _start_metrics(self) -> None:
        if self._metrics_task is None:
            self._metrics_task = report_periodically(
                lambda: self.metrics.update(self.engine.stats())
            )
