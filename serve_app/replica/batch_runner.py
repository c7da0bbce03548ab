"""Runs batches of requests on a replica's AsyncEngine: the replica side of a batch stream.

`BatchRunner.run(requests)` hands every request of the batch to the engine with ONE
Mailbox, so the engine thread wakes this event loop once per step for the whole batch,
and yields one `BatchMessage` per wake-up holding each request's new tokens (grouped by
`replica.stream_interval_tokens`, serve_app/replica/chunk_coalescer.py). No task or queue
per request. A request whose id arrives through `abort_requests` (from the replica's
AbortChannel) is aborted alone: the engine frees its KV blocks and the stream reports its
end with an empty TaggedChunk. Closing the stream (the caller cancelled) aborts every
request still running. A request the engine rejects ends with its error; the others go on.
`hand_back` ends every request with an error the caller resumes elsewhere (a drain), and
every later batch too until `resume` (the drain was cancelled, or its deadline moved out).

Each run of a request is its own sequence in the engine, with an attempt-scoped id
(`<request id>#<n>`): a request resumed after a silence timeout can reach this very
replica while its old stream is still open. The new run supersedes the old one (the old
sequence is aborted and the old stream reports the request ended), and each stream's
clean-up ends only the run it started, never the run that replaced it.

A batch stream with nothing to say sends an empty message every HEARTBEAT_S (requests
still waiting for the engine, a long prefill): its caller tells a replica that went
silent (a node gone without a trace) from one that is busy (BatchCall's watchdog).

Under load, messages are time-sliced (`replica.stream_interval_ms`): a message that
carries neither a first token nor an end waits until the slice since the previous message
is over, the slice scaled by how full the engine is (a request running alone is never
held), so every process downstream handles fewer, fuller messages.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.mailbox import EngineRequest, Mailbox, RequestFailure
from serve_app.engine.request_output import RequestOutput
from serve_app.messages import BatchMessage, BatchRequest, TaggedChunk, TokenChunk
from serve_app.replica.chunk_coalescer import ChunkCoalescer

HEARTBEAT_S = 2.0  # an idle batch stream's empty message, at most this far apart
_HEARTBEAT = object()  # put into every live batch's mailbox once per HEARTBEAT_S


@dataclass(eq=False, slots=True)
class _Run:
    """One run of a request on this replica: its id in the engine and its stream's sink."""

    request_id: str
    engine_id: str
    sink: Mailbox


def chunk_from_output(output: RequestOutput) -> TokenChunk:
    return TokenChunk(
        token_ids=output.new_token_ids,
        finished=output.finished,
        finish_reason=output.finish_reason,
        num_prompt_tokens=output.num_prompt_tokens,
        num_output_tokens=output.num_output_tokens,
        logprobs=output.new_logprobs,
    )


class BatchRunner:
    def __init__(
        self,
        engine: AsyncEngine,
        stream_interval_tokens: int,
        on_cancelled: Callable[[int], None],
        stream_interval_s: float = 0.0,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self._engine = engine
        self._stream_interval_tokens = stream_interval_tokens
        self._stream_interval_s = stream_interval_s  # the slice at a full engine
        self._on_cancelled = on_cancelled  # called with the number of requests left unfinished
        self._runs: dict[str, _Run] = {}  # the live run of each request of every batch, by id
        self._attempts = itertools.count(1)  # numbers each run's engine id
        self._handed_back: BaseException | None = None  # set while the node drains
        self._heartbeat_s = heartbeat_s
        self._heartbeats: asyncio.Task | None = None
        self._beat = 0  # heartbeats so far

    def hand_back(self, error: BaseException) -> None:
        """End every live request, and every later batch at once until `resume`, with
        `error`: the node is going away, and the caller resumes them elsewhere
        (serve_app/replica/drain.py)."""
        self._handed_back = error
        for run in list(self._runs.values()):
            self._end(run, error)

    def resume(self) -> None:
        """Take new batches again after `hand_back`: the node's drain was cancelled, or its
        deadline moved past the hand-back moment (serve_app/replica/drain.py)."""
        self._handed_back = None

    @property
    def num_live_requests(self) -> int:
        return len(self._runs)

    def abort_requests(self, request_ids: list[str]) -> None:
        """Abort single requests of running batches; ids not (or no longer) here are ignored."""
        for request_id in request_ids:
            run = self._runs.get(request_id)
            if run is not None:
                self._end(run)

    def _end(self, run: _Run, error: BaseException | None = None) -> None:
        """Stop a live run in the engine; its stream reports the request's end (`error`,
        or an abort)."""
        del self._runs[run.request_id]
        self._engine.abort(run.engine_id)
        run.sink.put([RequestFailure(run.engine_id, error)])

    async def run(
        self, requests: list[BatchRequest], abort_channel: str | None = None
    ) -> AsyncIterator[BatchMessage]:
        if self._handed_back is not None:
            ended = [TaggedChunk(r.request_id, None, self._handed_back) for r in requests]
            yield BatchMessage(ended, abort_channel)
            return
        if self._heartbeats is None or self._heartbeats.done():
            self._heartbeats = asyncio.get_running_loop().create_task(self._beat_forever())
        sink = Mailbox.on_running_loop()
        coalescers = {
            request.request_id: ChunkCoalescer(self._stream_interval_tokens) for request in requests
        }
        runs: dict[str, _Run] = {}  # this stream's runs, by engine id
        for request in requests:
            previous = self._runs.get(request.request_id)
            if previous is not None:  # resumed here while its old stream is still open
                self._end(previous)
            run = _Run(request.request_id, f"{request.request_id}#{next(self._attempts)}", sink)
            self._runs[request.request_id] = runs[run.engine_id] = run
        try:
            self._engine.add_requests(
                [
                    EngineRequest(
                        run.engine_id, request.prompt_ids, request.params, request.output_ids
                    )
                    for run, request in zip(runs.values(), requests, strict=True)
                ],
                sink,
            )
            last_sent_s = 0.0
            beat_seen = self._beat
            while coalescers:
                items = await sink.take()
                if beat_seen != self._beat:  # a heartbeat may be among the items
                    beat_seen = self._beat
                    items = [item for item in items if item is not _HEARTBEAT]
                if not items:
                    if time.monotonic() - last_sent_s >= self._heartbeat_s:
                        yield BatchMessage([], abort_channel)  # alive, nothing to say
                        abort_channel = None
                        last_sent_s = time.monotonic()
                    continue
                hold_s = last_sent_s + self._slice_s() - time.monotonic()
                if hold_s > 0 and not any(_urgent(item) for item in items):
                    await asyncio.sleep(hold_s)
                    items += sink.take_nowait()
                    if beat_seen != self._beat:
                        beat_seen = self._beat
                        items = [item for item in items if item is not _HEARTBEAT]
                chunks = self._tag(items, coalescers, runs)
                if chunks:
                    yield BatchMessage(chunks, abort_channel)
                    abort_channel = None  # named in the first message only
                    last_sent_s = time.monotonic()
        finally:
            for run in runs.values():  # left unfinished: the caller cancelled the stream
                if run.request_id in coalescers:
                    self._forget(run)
                    self._engine.abort(run.engine_id)  # a no-op once the engine ended it
            if coalescers:
                self._on_cancelled(len(coalescers))

    def _forget(self, run: _Run) -> None:
        """`run` ended: it is no longer the request's live run (unless replaced already)."""
        if self._runs.get(run.request_id) is run:
            del self._runs[run.request_id]

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            self._beat += 1
            for sink in {run.sink for run in self._runs.values()}:
                sink.put([_HEARTBEAT])

    def _slice_s(self) -> float:
        """The time slice now: the configured one scaled by how full the engine is."""
        if not self._stream_interval_s:
            return 0.0
        fullness = self._engine.num_active_streams / self._engine.max_num_seqs
        return self._stream_interval_s * min(1.0, fullness)

    def _tag(
        self, items: list, coalescers: dict[str, ChunkCoalescer], runs: dict[str, _Run]
    ) -> list[TaggedChunk]:
        """One step's engine items as TaggedChunks; requests that end leave `coalescers`."""
        chunks = []
        for item in items:
            run = runs[item.request_id]  # items carry engine ids
            request_id = run.request_id
            coalescer = coalescers.get(request_id)
            if coalescer is None:
                continue  # aborted: its end was already reported
            if isinstance(item, RequestFailure):
                del coalescers[request_id]
                self._forget(run)
                chunks.append(TaggedChunk(request_id, None, item.error))
                if item.error is None:
                    self._on_cancelled(1)
                continue
            chunk = coalescer.add(chunk_from_output(item))
            if chunk is None:
                continue
            chunks.append(TaggedChunk(request_id, chunk))
            if chunk.finished:
                del coalescers[request_id]
                self._forget(run)
        return chunks


def _urgent(item: RequestOutput | RequestFailure) -> bool:
    """Sent without waiting for the slice: a first token (TTFT) or a request's end."""
    if isinstance(item, RequestFailure) or item.finished:
        return True
    return item.num_output_tokens == len(item.new_token_ids) > 0
