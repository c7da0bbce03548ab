"""Batcher: the adaptive micro-batcher deployment between the ingress and the model replicas.

It serves the same call it makes: `generate_batch(requests)`, many requests in, one stream
of BatchMessages out (serve_app/messages.py). The ingress sends it the requests that
arrived together; each joins a queue, and a flusher task asks the AdaptiveBatchPolicy
(serve_app/batcher/policy.py) when to forward and how many, then forwards that many of
the oldest requests to a replica as ONE `generate_batch` call (serve_app/batch_call.py).
Each replica message is folded into every request's RequestState
(serve_app/batcher/request_state.py: what a failover resumes from) and fanned out to the
ingress streams those requests came from: one message per ingress stream per replica
message, never one per token per request. Policy knobs arrive as the deployment's
`user_config` (`reconfigure`).

A rejected user_config. A deploy that changes only the `user_config` makes Serve call
`reconfigure` on the running replicas. Serve 2.60 treats one that raises as a failed start
(serve/_private/deployment_state.py: the UPDATING replica is stopped) and starts new
replicas, whose start-up `reconfigure` fails the same way until the deployment is
DEPLOY_FAILED with no replica (old replicas outlive only a failed build of the app), and
requests fail (503, or no answer). So `reconfigure` never raises: it
logs a user_config the policy's model rejects at ERROR on Serve's replica logger (the
replica log, `make run`'s terminal), naming each bad field, shows it in `stats()`, and
keeps the policy it has (on a replica started later: the args' `batcher.policy`). Serve
still lists the rejected user_config as the deployment's; `make deploy`'s preflight
(serve_app/deploy_overrides.py) refuses one before it reaches Serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from serve_app.abort_channel import AbortSender, LazyAbortListener
from serve_app.batch_call import BatchCall
from serve_app.batcher.failover import backoff_s, is_replica_failure, resume_reason
from serve_app.batcher.policy import (
    AdaptiveBatchPolicy,
    BatchPolicyConfig,
    BatchPolicyConfigError,
)
from serve_app.batcher.request_state import RequestState
from serve_app.config import AppConfig
from serve_app.engine.mailbox import Mailbox
from serve_app.messages import BatchMessage, BatchRequest, TaggedChunk
from serve_app.metrics import RETRY_REASONS, BatcherMetrics

logger = logging.getLogger(__name__)
# Serve's replica logger: the replica's log file, and stderr (`make run`'s terminal).
serve_logger = logging.getLogger("ray.serve")

FLUSHER_ERROR_PAUSE_S = 0.01  # after an unexpected flusher error, before deciding again


@dataclass(eq=False, slots=True)
class _Waiter:
    """One request inside the batcher: its state, its ingress stream, its replica call."""

    state: RequestState
    arrived_s: float
    outbox: Mailbox  # the ingress stream it came in on (TaggedChunks)
    call: BatchCall | None = None  # None while queued or waiting to be resumed
    num_failovers: int = 0
    retry: asyncio.TimerHandle | None = None  # a pending resume after a failure
    # The replicas that failed it (Serve replica ids): its resumes avoid them.
    failed_replicas: set[str] = field(default_factory=set)


class Batcher:
    def __init__(
        self, config: AppConfig, replica_handle, abort_sender: AbortSender | None = None
    ) -> None:
        self.policy = AdaptiveBatchPolicy(config.batcher.policy)
        self.rejected_user_config: str | None = None  # why the last user_config was refused
        self.metrics = BatcherMetrics()
        self.batch_size_counts: Counter[int] = Counter()
        self._replica = replica_handle.options(stream=True, method_name="generate_batch")
        self._failover = config.batcher.failover
        self._rng = random.Random()
        self.num_failovers = 0
        self.failover_reasons: Counter[str] = Counter()  # replica_died / node_drained
        self.retry_reasons: Counter[str] = Counter()  # overloaded: every queue was full
        self._abort_sender = abort_sender or AbortSender()
        self._abort_listener = LazyAbortListener(on_abort=self.abort_requests)
        self._queue: deque[_Waiter] = deque()
        self._live: dict[str, _Waiter] = {}
        self._calls: set[BatchCall] = set()
        self._arrived = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._next_batch_id = 0

    def reconfigure(self, user_config: Mapping[str, object]) -> None:
        """Serve calls this with the deployment's user_config: the policy knobs, live. One
        the policy rejects leaves it as it was (the module docstring says why)."""
        try:
            config = BatchPolicyConfig.from_user_config(user_config)
        except BatchPolicyConfigError as error:
            self.rejected_user_config = str(error)
            serve_logger.error(
                "Batcher user_config %r rejected, the batch policy stays %s: %s",
                user_config,
                self.policy.config.to_dict(),
                error,
            )
            return
        self.rejected_user_config = None
        self.policy.reconfigure(config)

    async def generate_batch(self, requests: list[BatchRequest]) -> AsyncIterator[BatchMessage]:
        """Queue the requests; stream every one's chunks back, many per message."""
        if self._flusher is None:
            # A fresh context: Serve's request context (a contextvar) would otherwise make
            # the flusher a child of this first call.
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_forever(), context=contextvars.Context()
            )
            self.metrics.start_reporting(lambda: (len(self._queue), self.policy.window_s()))
        outbox = Mailbox.on_running_loop()
        now = time.monotonic()
        open_ids = set()
        for request in requests:
            state = RequestState(request.request_id, list(request.prompt_ids), request.params)
            waiter = _Waiter(state, now, outbox)
            self._queue.append(waiter)
            self._live[request.request_id] = waiter
            open_ids.add(request.request_id)
        self.policy.record_arrival(len(requests))
        self._arrived.set()
        abort_channel = self._abort_listener.channel_name()
        try:
            while open_ids:
                chunks = await outbox.take()
                for tagged in chunks:
                    if tagged.final:
                        open_ids.discard(tagged.request_id)
                yield BatchMessage(chunks, abort_channel)
                abort_channel = None  # named in the first message only
        finally:
            for request_id in open_ids:  # the ingress cancelled the stream
                self._leave(request_id)

    async def stats(self) -> dict:
        """Queue and batch counters, the policy's knobs and estimates (for tests, debugging)."""
        snapshot = self.policy.snapshot()
        return {
            "pid": os.getpid(),
            "num_queued": len(self._queue),
            "num_live_requests": len(self._live),
            "num_batches_running": len(self._calls),
            "batch_servers": self._batch_servers(),
            "batch_size_counts": dict(self.batch_size_counts),
            "num_failovers": self.num_failovers,
            "failover_reasons": dict(self.failover_reasons),
            "retry_reasons": dict(self.retry_reasons),
            "policy": self.policy.config.to_dict(),
            "rejected_user_config": self.rejected_user_config,
            "window_s": snapshot.window_s,
            "target_batch_size": snapshot.target_batch_size,
            "forward_latency_s": snapshot.forward_latency_s,
        }

    async def live_requests(self) -> dict[str, RequestState]:
        """The state of every request not yet finished, by request id."""
        return {request_id: waiter.state for request_id, waiter in self._live.items()}

    def _batch_servers(self) -> dict[int, str]:
        """The replica serving each running batch that live requests are in, named by its
        AbortChannel (owned by that replica): with `live_requests()`' batch ids, which
        replica holds which request (the chaos test picks its victim by this)."""
        return {
            waiter.state.batch_id: waiter.call.abort_channel
            for waiter in self._live.values()
            if waiter.call is not None and waiter.call.abort_channel is not None
        }

    # ---- leaving ------------------------------------------------------------------------
    def abort_requests(self, request_ids: list[str]) -> None:
        """From this batcher's AbortChannel: the ingress dropped these requests."""
        for request_id in request_ids:
            waiter = self._live.get(request_id)
            if self._leave(request_id):
                waiter.outbox.put([TaggedChunk(request_id, None)])

    def _leave(self, request_id: str) -> bool:
        """Stop the work done for a request whose caller left; False if it had ended."""
        waiter = self._live.pop(request_id, None)
        if waiter is None:
            return False
        waiter.state.cancelled = True
        if waiter.retry is not None:
            waiter.retry.cancel()  # it was waiting to be resumed
        elif waiter.call is None:
            self._queue.remove(waiter)  # nothing reached a replica yet
        else:
            waiter.call.leave(request_id)
        return True

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
        requests = [
            BatchRequest(
                w.state.request_id, w.state.prompt_ids, w.state.params, list(w.state.output_ids)
            )
            for w in waiters
        ]
        call = BatchCall(
            self._replica,
            requests,
            self._deliver,
            self._abort_sender,
            on_first_token=self.policy.record_forward_latency,
            silence_timeout_s=self._failover.silence_timeout_s,
            first_message_timeout_s=self._failover.first_message_timeout_s,
            avoid_replicas=frozenset().union(*(w.failed_replicas for w in waiters)),
        )
        now = time.monotonic()
        for waiter in waiters:
            waiter.call = call
            waiter.state.batch_id = self._next_batch_id
        self._next_batch_id += 1
        self.metrics.record_batch([now - waiter.arrived_s for waiter in waiters])
        self.batch_size_counts[len(waiters)] += 1
        self._calls.add(call)
        call.start().add_done_callback(lambda _: self._calls.discard(call))

    def _resume_later(self, waiter: _Waiter, error: BaseException) -> bool:
        """Schedule a failed request's resume on another replica, if failover may."""
        settings = self._failover
        if not (settings.enabled and is_replica_failure(error)):
            return False
        if waiter.num_failovers >= settings.max_attempts:
            logger.warning(
                "request %s: replica failed again after %d failovers, giving up: %r",
                waiter.state.request_id,
                waiter.num_failovers,
                error,
            )
            return False
        waiter.num_failovers += 1  # every resume counts against max_attempts
        reason = resume_reason(error)
        if reason in RETRY_REASONS:  # overload: no replica failed, so no failover
            self.retry_reasons[reason] += 1
            self.metrics.record_retry(reason)
        else:
            self.num_failovers += 1
            self.failover_reasons[reason] += 1
            self.metrics.record_failover(reason)
            if waiter.call is not None and waiter.call.replica_id is not None:
                waiter.failed_replicas.add(waiter.call.replica_id)
        waiter.call = None
        delay_s = backoff_s(
            waiter.num_failovers, settings.backoff_s, settings.max_backoff_s, self._rng
        )
        logger.info(
            "request %s: resume %d (%s) after %d tokens in %.2fs (%r)",
            waiter.state.request_id,
            waiter.num_failovers,
            reason,
            len(waiter.state.output_ids),
            delay_s,
            error,
        )
        waiter.retry = asyncio.get_running_loop().call_later(delay_s, self._requeue, waiter)
        return True

    def _requeue(self, waiter: _Waiter) -> None:
        waiter.retry = None
        self._queue.appendleft(waiter)  # it has waited already: first in line
        self._arrived.set()

    def _deliver(self, chunks: list[TaggedChunk]) -> None:
        """One replica message: fold each chunk into its request, one put per ingress stream."""
        by_outbox: dict[Mailbox, list[TaggedChunk]] = {}
        for tagged in chunks:
            waiter = self._live.get(tagged.request_id)
            if waiter is None:
                continue  # its caller left; the abort is on its way to the replica
            if tagged.chunk is not None:
                waiter.state.record(tagged.chunk)
            elif tagged.error is not None and self._resume_later(waiter, tagged.error):
                continue  # the caller hears nothing of it: its stream goes on after the resume
            if tagged.final:
                del self._live[tagged.request_id]
            by_outbox.setdefault(waiter.outbox, []).append(tagged)
        for outbox, items in by_outbox.items():
            outbox.put(items)
