"""ModelReplica: the Serve deployment that owns an AsyncEngine and streams token ids.

It sees token ids only (the ingress tokenizes). `generate` yields one TokenChunk per engine
step, or per `replica.stream_interval_tokens` tokens (serve_app/replica/batch_runner.py:
`token_chunks`, shared with the batch path); when the caller cancels, Serve cancels this
generator, and leaving the AsyncEngine stream early aborts the request and frees its KV
blocks. `generate_batch` is the micro-batcher's call: many requests in one stream
(serve_app/replica/batch_runner.py), single ones aborted through this replica's AbortChannel
(serve_app/abort_channel.py). Deployment options (replicas, resources, limits,
health-check timeouts) come from `serve_app.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict

import ray

from serve_app.abort_channel import AbortListener
from serve_app.config import AppConfig
from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchMessage, BatchRequest, TokenChunk
from serve_app.metrics import ReplicaMetrics, report_periodically
from serve_app.replica.batch_runner import BatchRunner, token_chunks
from serve_app.replica.ray_executor import make_llm_engine


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
            self.engine, self.stream_interval_tokens, on_cancelled=self._count_cancelled
        )
        self._abort_listener: AbortListener | None = None

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]:
        self._start_metrics()
        finished = False
        chunks = token_chunks(
            self.engine, prompt_ids, params, request_id, self.stream_interval_tokens
        )
        try:
            async with aclosing(chunks):  # closing it aborts the request in the engine
                async for chunk in chunks:
                    finished = chunk.finished
                    yield chunk
        finally:
            if not finished:
                self._count_cancelled()

    async def generate_batch(self, requests: list[BatchRequest]) -> AsyncIterator[BatchMessage]:
        """Run many requests in one stream: the micro-batcher's call."""
        self._start_metrics()
        async with aclosing(self.batches.run(requests, self._abort_channel())) as messages:
            async for message in messages:
                yield message

    def _abort_channel(self) -> str | None:  # the AbortChannel actor's name
        inside_an_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id()
        if self._abort_listener is None and inside_an_actor:
            self._abort_listener = AbortListener(on_abort=self.batches.abort)
        return self._abort_listener.channel_name if self._abort_listener else None

    def _count_cancelled(self) -> None:
        self.num_cancelled_streams += 1

    async def stats(self) -> dict:
        """Engine counters (running/waiting requests, KV blocks) plus open streams."""
        return {
            **asdict(self.engine.stats()),
            "num_active_streams": self.engine.num_active_streams,
            "num_cancelled_streams": self.num_cancelled_streams,
        }

    async def check_health(self) -> None:
        """Called by Serve; raising marks the replica unhealthy and gets it replaced."""
        self.engine.check_health()

    def __del__(self) -> None:
        # getattr: __init__ may have failed before setting it (a TP rank that did not start).
        if getattr(self, "_metrics_task", None) is not None:
            self._metrics_task.cancel()
        with contextlib.suppress(Exception):
            self.engine.shutdown()

    def _start_metrics(self) -> None:
        if self._metrics_task is None:
            self._metrics_task = report_periodically(
                lambda: self.metrics.update(self.engine.stats())
            )
