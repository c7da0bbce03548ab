"""What crosses the batcher -> replica boundary: one call carries a list of BatchRequests;
the replica's stream answers with BatchMessages, each carrying the TaggedChunks the engine
produced since the last one (one message per engine step, not per token)."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.engine.sampling_params import SamplingParams
from serve_app.token_stream import TokenChunk


@dataclass(slots=True)
class BatchRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(slots=True)
class TaggedChunk:
    """One request's chunk; or its end without one: an error, or an abort (both None)."""

    request_id: str
    chunk: TokenChunk | None
    error: BaseException | None = None

    @property
    def final(self) -> bool:
        return self.chunk is None or self.chunk.finished


@dataclass(slots=True)
class BatchMessage:
    """One message of a batch stream: every chunk the engine produced since the last one.

    The first message also names the replica's AbortChannel actor (serve_app/abort_channel.py),
    where single requests of this batch are aborted; None outside Ray. A name, not a handle,
    and no message of its own: passing an actor handle through the stream while the replica
    runs the batch's prefill cost about 20 ms of TTFT on a 2-core machine (bench/README.md).
    """

    chunks: list[TaggedChunk]
    abort_channel: str | None = None
