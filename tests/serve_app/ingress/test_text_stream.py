"""generate_choice over grouped chunks: however a replica groups tokens into chunks
(replica.stream_interval_tokens), the text, the stop, the token counts, the logprobs and the
token ids a choice reports are those of one token per chunk."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.engine.sampling_params import SamplingParams
from serve_app.engine.sequence import TokenLogprobs
from serve_app.ingress.text_stream import ChoiceRequest, TextDelta, generate_choice
from serve_app.messages import TokenChunk
from serve_app.replica.chunk_coalescer import ChunkCoalescer

TEXT = "one two three. four five six. seven"


class FixedTokens:
    """A TokenStreamer replaying fixed token ids, one engine step each, grouped as a replica
    with the given stream interval would; it records whether the caller left early."""

    def __init__(self, token_ids: list[int], interval: int) -> None:
        self.token_ids = token_ids
        self.interval = interval
        self.closed_early = False

    async def stream(self, prompt_ids, params, request_id):
        coalescer = ChunkCoalescer(self.interval)
        finished = False
        try:
            for n, token_id in enumerate(self.token_ids, start=1):
                finished = n == len(self.token_ids)
                step = TokenChunk(
                    [token_id],
                    finished,
                    "length" if finished else None,
                    len(prompt_ids),
                    n,
                    [TokenLogprobs(token_id=token_id, logprob=-n / 10, top={})],
                )
                if (chunk := coalescer.add(step)) is not None:
                    yield chunk
        finally:
            self.closed_early = not finished


def run_choice(tokenizer, interval: int, stop: list[str]) -> tuple[list[TextDelta], bool]:
    streamer = FixedTokens(tokenizer.encode(TEXT, add_special_tokens=False), interval)
    choice = ChoiceRequest(0, [1, 2, 3], SamplingParams(max_tokens=64), stop, "r0")

    async def collect() -> list[TextDelta]:
        return [delta async for delta in generate_choice(streamer, tokenizer, choice)]

    return asyncio.run(collect()), streamer.closed_early


def summary(deltas: list[TextDelta]) -> tuple:
    return (
        "".join(delta.text for delta in deltas),
        deltas[-1].finish_reason,
        deltas[-1].num_output_tokens,
        [lp.token_id for delta in deltas for lp in delta.logprobs],
        [t for delta in deltas for t in delta.token_ids],
    )


@pytest.mark.parametrize("stop", [[], ["five"], ["."], ["e s"]])
@pytest.mark.parametrize("interval", [2, 5, 64])
def test_grouped_chunks_give_what_single_tokens_give(tokenizer, interval, stop):
    single, single_closed_early = run_choice(tokenizer, 1, stop)
    grouped, _ = run_choice(tokenizer, interval, stop)
    assert summary(grouped) == summary(single)
    text, finish_reason, num_output, _, _ = summary(grouped)
    if stop:  # the stop string comes before the end: the request is stopped downstream
        assert finish_reason == "stop" and stop[0] not in text and single_closed_early
        assert num_output < len(tokenizer.encode(TEXT, add_special_tokens=False))
    else:
        assert (text, finish_reason) == (TEXT, "length")
