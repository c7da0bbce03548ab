"""Batcher: the adaptive micro-batcher deployment between the ingress and the model replicas.

The ingress calls `generate(prompt_ids, params, request_id)` exactly as it would call a
replica (it only sees a TokenStreamer). Each call joins a queue; a flusher task asks the
AdaptiveBatchPolicy (serve_app/batcher/policy.py) when to forward and how many, and forwards
that many of the oldest requests to a replica as ONE streaming `generate_batch` call. The
replica's stream is demultiplexed back to each caller's stream, and every token is folded
into the request's RequestState (serve_app/batcher/request_state.py), which is what a later failover
resumes from. Policy knobs arrive as the deployment's `user_config` (`reconfigure`).

Cancellation. A caller that leaves while its request is still queued is just dropped from
the queue. Once forwarded, Serve would route an `abort` call through the replica handle to
any replica, not necessarily the one running the batch; so the first message of the
replica's batch stream names its AbortChannel actor (serve_app/abort_channel.py), and
the batcher sends the request id there: the replica cancels that request alone, aborting it
in the engine and freeing its KV blocks, while the rest of the batch streams on. When the
last live caller of a batch leaves, the batcher cancels the whole batch stream instead,
which cancels everything it still runs. A leave before that first message arrives (during
the batch's prefill) is queued and sent when it does. Batch calls run outside any caller's
Serve request context, so that no caller's cancellation reaches a batch it shares with
others.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from ray.exceptions import RayTaskError

from serve_app.abort_channel import AbortSender
from serve_app.batcher.policy import AdaptiveBatchPolicy, BatchPolicyConfig
from serve_app.batcher.request_state import RequestState
from serve_app.config import AppConfig
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest, TaggedChunk, TokenChunk
from serve_app.metrics import BatcherMetrics

logger = logging.getLogger(__name__)

FLUSHER_ERROR_PAUSE_S = 0.01  # after an unexpected flusher error, before deciding again


class ReplicaAbortedError(RuntimeError):
    """The replica ended a request the batcher had not asked it to abort."""


@dataclass(eq=False)
class _Waiter:
    """One caller inside the batcher: its request's state and the chunks owed to it."""

    state: RequestState
    arrived_s: float
    chunks: asyncio.Queue = field(default_factory=asyncio.Queue)  # TokenChunk | BaseException
    batch: _Batch | None = None  # None while queued


@dataclass(eq=False)
class _Batch:
    """One forwarded call: the callers still waiting for its tokens, by request id."""

    batch_id: int
    live: dict[str, _Waiter]
    sender: AbortSender
    task: asyncio.Task | None = None
    abort_channel: str | None = None  # the replica's AbortChannel name, from the stream
    unsent_aborts: list[str] = field(default_factory=list)

    def abort(self, request_id: str) -> None:
        if self.abort_channel is None:
            self.unsent_aborts.append(request_id)
        else:
            self.sender.send(self.abort_channel, [request_id])

    def started(self, abort_channel: str) -> None:
        self.abort_channel = abort_channel
        if self.unsent_aborts:
            self.sender.send(abort_channel, self.unsent_aborts)
            self.unsent_aborts = []


class Batcher:
    def __init__(
        self, config: AppConfig, replica_handle, abort_sender: AbortSender | None = None
    ) -> None:
        self.policy = AdaptiveBatchPolicy(BatchPolicyConfig.from_user_config(config.batcher.policy))
        self.metrics = BatcherMetrics()
        self.batch_size_counts: Counter[int] = Counter()
        self._replica = replica_handle.options(stream=True, method_name="generate_batch")
        self._abort_sender = abort_sender or AbortSender()
        self._queue: deque[_Waiter] = deque()
        self._live: dict[str, RequestState] = {}
        self._batches: set[_Batch] = set()
        self._arrived = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._next_batch_id = 0

    def reconfigure(self, user_config: Mapping[str, object]) -> None:
        """Serve calls this with the deployment's user_config: the policy knobs, live."""
        self.policy.reconfigure(user_config)

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]:
        if self._flusher is None:
            # A fresh context: Serve's request context (a contextvar) would otherwise make
            # every forwarded batch a child of this first request, and cancelling that
            # request would cancel batch calls still waiting for a replica.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(), context=contextvars.Context()
            )
            self.metrics.start_reporting(lambda: (len(self._queue), self.policy.window_s()))
        waiter = _Waiter(RequestState(request_id, list(prompt_ids), params), time.monotonic())
        self._queue.append(waiter)
        self._live[request_id] = waiter.state
        self.policy.record_arrival()
        self._arrived.set()
        try:
            while True:
                item = await waiter.chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            self._live.pop(request_id, None)
            if not waiter.state.finished:
                self._leave(waiter)

    async def stats(self) -> dict:
        """Queue and batch counters, the policy's knobs and estimates (for tests, debugging)."""
        snapshot = self.policy.snapshot()
        return {
            "pid": os.getpid(),
            "num_queued": len(self._queue),
            "num_live_requests": len(self._live),
            "num_batches_running": len(self._batches),
            "batch_size_counts": dict(self.batch_size_counts),
            "policy": self.policy.config.to_dict(),
            "window_s": snapshot.window_s,
            "target_batch_size": snapshot.target_batch_size,
            "forward_latency_s": snapshot.forward_latency_s,
        }

    async def live_requests(self) -> dict[str, RequestState]:
        """The state of every request not yet finished, by request id."""
        return dict(self._live)

    # ---- leaving ------------------------------------------------------------------------
    def _leave(self, waiter: _Waiter) -> None:
        """The caller left before its request finished: stop the work done for it."""
        request_id = waiter.state.request_id
        batch = waiter.batch
        if batch is None:
            waiter.state.cancelled = True
            self._queue.remove(waiter)  # nothing reached a replica yet
            return
        if batch.live.pop(request_id, None) is None:
            return  # it already ended with an error
        waiter.state.cancelled = True
        if batch.live:
            batch.abort(request_id)
        else:
            assert batch.task is not None
            batch.task.cancel()  # nobody left: cancelling the stream stops the whole batch

    # ---- flushing -----------------------------------------------------------------------
    async def _flush_forever(self) -> None:
        while True:
            try:
                await self._flush_or_wait()
            except Exception:  # the flusher must outlive any bug, or every request hangs
                logger.exception("batcher flusher error")
                await asyncio.sleep(FLUSHER_ERROR_PAUSE_S)

    async def _flush_or_wait(self) -> None:
        self._arrived.clear()  # before deciding: an arrival after this wakes the wait below
        oldest_age_s = time.monotonic() - self._queue[0].arrived_s if self._queue else 0.0
        decision = self.policy.decide(len(self._queue), oldest_age_s)
        if decision.flush:
            self._forward([self._queue.popleft() for _ in range(decision.batch_size)])
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), decision.wait_s)

    def _forward(self, waiters: list[_Waiter]) -> None:
        batch = _Batch(
            self._next_batch_id, {w.state.request_id: w for w in waiters}, self._abort_sender
        )
        self._next_batch_id += 1
        now = time.monotonic()
        for waiter in waiters:
            waiter.batch = batch
            waiter.state.batch_id = batch.batch_id
        self.metrics.record_batch([now - waiter.arrived_s for waiter in waiters])
        self.batch_size_counts[len(waiters)] += 1
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        self._batches.add(batch)
        batch.task.add_done_callback(lambda _: self._batches.discard(batch))

    async def _run(self, batch: _Batch) -> None:
        """Forward one batch and hand each request's chunks to its caller."""
        requests = [
            BatchRequest(w.state.request_id, w.state.prompt_ids, w.state.params)
            for w in batch.live.values()
        ]
        started_s = time.monotonic()
        responses = self._replica.remote(requests)
        stream_ended = False
        awaiting_first_token = True
        try:
            async for message in responses:
                if message.abort_channel is not None:
                    batch.started(message.abort_channel)
                if awaiting_first_token and any(m.chunk is not None for m in message.chunks):
                    self.policy.record_forward_latency(time.monotonic() - started_s)
                    awaiting_first_token = False
                for tagged in message.chunks:
                    self._deliver(batch, tagged)
            stream_ended = True
            self._fail(batch, RuntimeError("the replica's batch stream ended early"))
        except asyncio.CancelledError:  # by _leave once nobody waits; else tell those left
            self._fail(batch, ReplicaAbortedError("the batch call was cancelled"))
            raise
        except Exception as error:  # the replica or the call failed: tell every caller
            stream_ended = True
            self._fail(batch, error.cause if isinstance(error, RayTaskError) else error)
        finally:
            if not stream_ended:
                responses.cancel()

    def _deliver(self, batch: _Batch, tagged: TaggedChunk) -> None:
        waiter = batch.live.get(tagged.request_id)
        if waiter is None:
            return  # its caller left; the abort is on its way to the replica
        if tagged.chunk is not None:
            waiter.state.record(tagged.chunk)
            waiter.chunks.put_nowait(tagged.chunk)
        else:
            waiter.chunks.put_nowait(
                tagged.error or ReplicaAbortedError(f"request {tagged.request_id} was aborted")
            )
        if tagged.final:
            del batch.live[tagged.request_id]

    def _fail(self, batch: _Batch, error: BaseException) -> None:
        for waiter in batch.live.values():
            waiter.chunks.put_nowait(error)
        batch.live.clear()
