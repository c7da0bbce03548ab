"""One choice of a completion: token chunks in, text deltas out.

Runs the incremental detokenizer and the stop-string check over a TokenStreamer, stops
the request downstream as soon as a stop string appears, and keeps exact token counts.
`merge` interleaves several choices (several prompts, or n > 1) into one stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.sequence import TokenLogprobs
from serve_app.ingress.detokenizer import IncrementalDetokenizer
from serve_app.ingress.stop_checker import StopChecker
from serve_app.ingress.token_source import TokenStreamer


@dataclass(slots=True)
class TextDelta:
    index: int  # the choice index
    text: str
    num_prompt_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    # The tokens since the previous delta (those still held back as text included).
    token_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class ChoiceRequest:
    index: int
    prompt_ids: list[int]
    params: SamplingParams
    stop: list[str]
    request_id: str


async def generate_choice(
    streamer: TokenStreamer, tokenizer, choice: ChoiceRequest
) -> AsyncIterator[TextDelta]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    stops = StopChecker(choice.stop)
    num_output = 0
    finish_reason = None
    pending_ids: list[int] = []  # tokens not yet carried by a delta
    stream = streamer.stream(choice.prompt_ids, choice.params, choice.request_id)
    try:
        async for chunk in stream:
            # A chunk may hold several tokens (replica.stream_interval_tokens): they are
            # checked one at a time, so a stop string ends the choice at the same token, with
            # the same counts and logprobs, however the tokens were grouped.
            text = ""
            num_taken = 0
            for token_id in chunk.token_ids:
                num_taken += 1
                text += stops.add(detokenizer.add([token_id]))
                if stops.stopped:
                    break
            num_output = chunk.num_output_tokens - (len(chunk.token_ids) - num_taken)
            pending_ids += chunk.token_ids[:num_taken]
            logprobs = chunk.logprobs[:num_taken]
            if stops.stopped:
                finish_reason = "stop"
            elif chunk.finished:
                text += stops.add(detokenizer.flush())
                finish_reason = "stop" if stops.stopped else chunk.finish_reason
                text += stops.flush()
            if text or logprobs or finish_reason:
                yield TextDelta(
                    choice.index,
                    text,
                    chunk.num_prompt_tokens,
                    num_output,
                    finish_reason,
                    logprobs,
                    pending_ids,
                )
                pending_ids = []
            if finish_reason is not None:
                return
    finally:
        await stream.aclose()  # cancels the request downstream if it is still running


async def merge(streams: list[AsyncIterator[TextDelta]]) -> AsyncIterator[TextDelta]:
    """Interleave streams in arrival order; an error in one cancels the others."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[TextDelta]) -> None:
        try:
            async for item in stream:
                await queue.put(item)
            await queue.put(done)
        except Exception as error:  # re-raised by the consumer below
            await queue.put(error)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
