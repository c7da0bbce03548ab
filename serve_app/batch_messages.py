"""What crosses the batcher -> replica boundary: one call carries a list of BatchRequests;
the replica's stream answers with one BatchStart, then lists of TaggedChunks (whatever the
engine produced since the last message, so one message per engine step, not per token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_app.engine.sampling_params import SamplingParams
from serve_app.token_stream import TokenChunk


@dataclass(slots=True)
class BatchRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass(slots=True)
class BatchStart:
    """The first message of a batch stream: where to send aborts for single requests of it.

    `abort_channel` is the replica's AbortChannel actor handle (serve_app/abort_channel.py),
    or None where the replica runs outside Ray."""

    abort_channel: Any


@dataclass(slots=True)
class TaggedChunk:
    """One request's chunk; or its end without one: an error, or an abort (both None)."""

    request_id: str
    chunk: TokenChunk | None
    error: BaseException | None = None

    @property
    def final(self) -> bool:
        return self.chunk is None or self.chunk.finished
