"""Where the ingress gets tokens: `TokenStreamer.stream(prompt_ids, params, request_id)`
yields `TokenChunk`s, the last with `finished` set; leaving the iteration early cancels
the request downstream, which aborts it in the engine and frees its KV blocks.

`BatchingTokenStreamer` is the one implementation over Serve: the requests that arrive
in the same event-loop turn (every choice of a request, and whatever other requests came
in with it) go down as ONE `generate_batch` call to the batcher, or to the model replicas
when the batcher is off (serve_app/batch_call.py), and the call's per-step messages are
fanned out to each request's mailbox: one wake-up per request per message, not per token.
Calling the model replicas directly (`batcher.enabled=false`), its calls have the
batcher's watchdog (`batcher.failover`'s timeouts, serve_app/batch_call.py): a replica
gone without a trace fails its requests (a 503) instead of leaving them hanging.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Protocol

from serve_app.abort_channel import AbortSender
from serve_app.batch_call import BatchAbortedError, BatchCall
from serve_app.config import AppConfig
from serve_app.engine.mailbox import Mailbox
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest, TaggedChunk, TokenChunk


class TokenStreamer(Protocol):
    def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]: ...


class BatchingTokenStreamer:
    """A TokenStreamer over a deployment handle whose `generate_batch` streams BatchMessages."""

    def __init__(
        self,
        handle,
        abort_sender: AbortSender | None = None,
        silence_timeout_s: float | None = None,
        first_message_timeout_s: float | None = None,
    ) -> None:
        self._handle = handle.options(stream=True, method_name="generate_batch")
        self._abort_sender = abort_sender or AbortSender()
        self._silence_timeout_s = silence_timeout_s
        self._first_message_timeout_s = first_message_timeout_s
        self._pending: list[BatchRequest] = []
        self._mailboxes: dict[str, Mailbox] = {}  # open requests, by id
        self._calls: dict[str, BatchCall] = {}  # the call carrying each sent request

    @classmethod
    def for_config(cls, handle, config: AppConfig) -> BatchingTokenStreamer:
        """The ingress's streamer over `handle`: the batcher, or (batcher off) the model
        replicas, whose calls then get the watchdog (the batcher watches its own)."""
        if config.batcher.enabled:
            return cls(handle)
        failover = config.batcher.failover
        return cls(
            handle,
            silence_timeout_s=failover.silence_timeout_s,
            first_message_timeout_s=failover.first_message_timeout_s,
        )

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]:
        mailbox = Mailbox.on_running_loop()
        self._mailboxes[request_id] = mailbox
        if not self._pending:  # the first of this turn sends them all at the turn's end
            asyncio.get_running_loop().call_soon(self._send, context=contextvars.Context())
        self._pending.append(BatchRequest(request_id, prompt_ids, params))
        finished = False
        try:
            while not finished:
                for tagged in await mailbox.take():
                    if tagged.chunk is None:
                        finished = True  # ended without a chunk: the call says why
                        raise tagged.error or BatchAbortedError(f"request {request_id} was aborted")
                    finished = tagged.chunk.finished
                    yield tagged.chunk
        finally:
            self._mailboxes.pop(request_id, None)
            call = self._calls.pop(request_id, None)
            if not finished:
                if call is None:  # still pending: never sent
                    self._pending = [r for r in self._pending if r.request_id != request_id]
                else:
                    call.leave(request_id)

    def _send(self) -> None:
        requests, self._pending = self._pending, []
        if not requests:
            return
        call = BatchCall(
            self._handle,
            requests,
            self._deliver,
            self._abort_sender,
            silence_timeout_s=self._silence_timeout_s,
            first_message_timeout_s=self._first_message_timeout_s,
        )
        for request in requests:
            self._calls[request.request_id] = call
        call.start()

    def _deliver(self, chunks: list[TaggedChunk]) -> None:
        for tagged in chunks:
            mailbox = self._mailboxes.get(tagged.request_id)
            if mailbox is not None:
                mailbox.put([tagged])
