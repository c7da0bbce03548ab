"""ChunkCoalescer: the first token goes out at once, later tokens in groups of the
interval, the end flushes what is held, and grouping never changes tokens or counts."""

from __future__ import annotations

from serve_app.engine.sequence import TokenLogprobs
from serve_app.messages import TokenChunk
from serve_app.replica.chunk_coalescer import ChunkCoalescer


def engine_chunks(num_tokens: int, first_empty: bool = False) -> list[TokenChunk]:
    """What a replica gets from the engine: one token per step, running counts."""
    chunks = [TokenChunk([], False, None, 5, 0)] if first_empty else []
    for n in range(1, num_tokens + 1):
        last = n == num_tokens
        chunks.append(
            TokenChunk(
                [100 + n],
                last,
                "length" if last else None,
                5,
                n,
                [TokenLogprobs(token_id=100 + n, logprob=-float(n), top={})],
            )
        )
    return chunks


def sent(interval: int, chunks: list[TokenChunk]) -> list[TokenChunk]:
    coalescer = ChunkCoalescer(interval)
    return [out for chunk in chunks if (out := coalescer.add(chunk)) is not None]


def test_interval_one_sends_every_chunk_unchanged():
    chunks = engine_chunks(5)
    assert sent(1, chunks) == chunks


def test_first_token_at_once_then_groups_then_the_rest_at_the_end():
    out = sent(4, engine_chunks(11))
    assert [len(chunk.token_ids) for chunk in out] == [1, 4, 4, 2]
    assert [t for chunk in out for t in chunk.token_ids] == list(range(101, 112))
    assert [chunk.num_output_tokens for chunk in out] == [1, 5, 9, 11]
    assert [lp.token_id for chunk in out for lp in chunk.logprobs] == list(range(101, 112))
    assert [chunk.finished for chunk in out] == [False, False, False, True]
    assert out[-1].finish_reason == "length"


def test_a_chunk_without_tokens_does_not_count_as_the_first_token():
    out = sent(3, engine_chunks(4, first_empty=True))
    assert [chunk.token_ids for chunk in out] == [[], [101], [102, 103, 104]]
    assert out[-1].finished and out[-1].num_output_tokens == 4


def test_a_request_that_ends_early_is_flushed_whole():
    out = sent(8, engine_chunks(3))
    assert [chunk.token_ids for chunk in out] == [[101], [102, 103]]
    assert out[-1].finished
