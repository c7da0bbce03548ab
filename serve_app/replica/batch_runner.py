"""Runs a batch of requests from the micro-batcher on a replica's AsyncEngine.

`BatchRunner.run(requests)` starts every request on the engine at once (the engine's
continuous batching does the rest) and yields `BatchMessage`s of `TaggedChunk`s as the
engine produces them, the first naming the replica's AbortChannel. A request whose id
arrives through `abort` (from that AbortChannel) is cancelled alone: its engine stream
closes, which aborts it and frees its KV blocks, and the stream reports its end with an
empty TaggedChunk. Cancelling the whole stream cancels every request of the batch. A request
the engine rejects ends with its error; the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.request_output import RequestOutput
from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchMessage, BatchRequest, TaggedChunk, TokenChunk
from serve_app.replica.chunk_coalescer import ChunkCoalescer


async def token_chunks(
    engine: AsyncEngine,
    prompt_ids: list[int],
    params: SamplingParams,
    request_id: str,
    stream_interval_tokens: int,
) -> AsyncIterator[TokenChunk]:
    """One request's engine outputs as TokenChunks, grouped by the stream interval
    (serve_app/replica/chunk_coalescer.py); the last has `finished` set. Closing it early aborts
    the request in the engine and frees its KV blocks."""
    coalescer = ChunkCoalescer(stream_interval_tokens)
    async with aclosing(engine.generate(prompt_ids, params, request_id)) as outputs:
        async for output in outputs:
            chunk = coalescer.add(chunk_from_output(output))
            if chunk is not None:
                yield chunk


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
        on_cancelled: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._stream_interval_tokens = (
            stream_interval_tokens  # serve_app/replica/chunk_coalescer.py
        )
        self._on_cancelled = on_cancelled  # one call per request that ends unfinished
        self._tasks: dict[str, asyncio.Task] = {}  # live requests of every batch, by id

    @property
    def num_live_requests(self) -> int:
        return len(self._tasks)

    def abort(self, request_ids: list[str]) -> None:
        """Cancel single requests of running batches; ids not (or no longer) here are ignored."""
        for request_id in request_ids:
            task = self._tasks.get(request_id)
            if task is not None:
                task.cancel()

    async def run(
        self, requests: list[BatchRequest], abort_channel: str | None = None
    ) -> AsyncIterator[BatchMessage]:
        outputs: asyncio.Queue[TaggedChunk] = asyncio.Queue()
        tasks = {
            request.request_id: asyncio.create_task(self._run_one(request, outputs))
            for request in requests
        }
        self._tasks.update(tasks)
        try:
            num_open = len(tasks)
            while num_open:
                chunks = [await outputs.get()]
                while not outputs.empty():
                    chunks.append(outputs.get_nowait())
                num_open -= sum(chunk.final for chunk in chunks)
                yield BatchMessage(chunks, abort_channel)
                abort_channel = None  # named in the first message only
        finally:
            for request_id, task in tasks.items():
                task.cancel()
                self._tasks.pop(request_id, None)

    async def _run_one(self, request: BatchRequest, outputs: asyncio.Queue) -> None:
        finished = False
        try:
            chunks = token_chunks(
                self._engine,
                request.prompt_ids,
                request.params,
                request.request_id,
                self._stream_interval_tokens,
            )
            async with aclosing(chunks):  # closing it aborts the request in the engine
                async for chunk in chunks:
                    finished = chunk.finished
                    outputs.put_nowait(TaggedChunk(request.request_id, chunk))
        except asyncio.CancelledError:
            outputs.put_nowait(TaggedChunk(request.request_id, None))
        except Exception as error:  # this request only: the batch goes on
            outputs.put_nowait(TaggedChunk(request.request_id, None, error))
        finally:
            self._tasks.pop(request.request_id, None)
            if not finished:
                self._on_cancelled()
