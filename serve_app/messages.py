"""What crosses deployments: request specs going down, token chunks coming back.

The ingress asks for tokens with a request's prompt ids and SamplingParams; the
micro-batcher forwards many requests to a replica in one call (`BatchRequest`s) and the
replica answers with `BatchMessage`s, each carrying the `TaggedChunk`s the engine produced
since the last one (one message per engine step, not per token).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.engine.mailbox import EngineRequest
from serve_app.engine.sequence import TokenLogprobs


class ReplicaDrainingError(RuntimeError):
    """A replica handed a request back: its node is being drained (a batcher resumes it)."""


@dataclass(slots=True)
class TokenChunk:
    """The tokens one engine step produced for one request, with running counts."""

    token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" once finished
    num_prompt_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprobs] = field(default_factory=list)


# One request of a batch call is exactly what the engine takes (its `output_ids` are the
# tokens a failover resume continues after), so the replica hands it over as it comes.
BatchRequest = EngineRequest


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
