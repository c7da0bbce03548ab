"""What a stream has delivered so far, and how a complete one ends.

An OpenAI SSE stream is complete when `data: [DONE]` arrived, no event carried an `error`,
and every choice that appeared got a `finish_reason`; a gRPC GenerateStream when its status
is OK and its last chunk carries `finish_reason`. Anything else is a cut. The counts are
what a resume needs (later: `prompt + delivered text`, the remaining `max_tokens`) and what
`StreamInterruptedError` reports meanwhile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serve_app.client.retry import ClientError, StreamInterruptedError

# The error `type`s of an in-band SSE error event that are safe to retry when nothing has
# reached the caller yet (the HTTP 429 and 503 of serve_app/ingress/errors.py).
RETRYABLE_ERROR_TYPES = frozenset({"rate_limit_error", "service_unavailable"})


class StreamCut(Exception):
    """A stream ended early: the connection closed, or the server reported an error in-band.

    `error_type` is the server's error type for an in-band error event, else None.
    """

    def __init__(self, reason: str, error_type: str | None = None):
        super().__init__(reason)
        self.error_type = error_type


@dataclass
class StreamProgress:
    """Chunks, characters and tokens a stream has delivered, and which choices finished."""

    chunks: int = 0
    chars: int = 0
    tokens: int | None = None  # None where the protocol carries no token ids (SSE)
    done: bool = False  # the protocol's own end marker arrived
    started_choices: set[int] = field(default_factory=set)
    finished_choices: set[int] = field(default_factory=set)

    def add(self, index: int, text: str, finish_reason: str | None, tokens: int | None = None):
        """One choice's part of a chunk (count the chunk itself in `chunks`)."""
        self.chars += len(text)
        if tokens is not None:
            self.tokens = (self.tokens or 0) + tokens
        self.started_choices.add(index)
        if finish_reason:
            self.finished_choices.add(index)

    def check_complete(self, end_marker: str) -> None:
        if not self.done:
            raise StreamCut(f"the stream ended before {end_marker}")
        unfinished = sorted(self.started_choices - self.finished_choices)
        if unfinished:
            raise StreamCut(f"choice(s) {unfinished} ended without a finish_reason")

    def interrupted(self, error: Exception) -> StreamInterruptedError:
        """The error of a stream cut after output reached the caller.

        A resume (the request again with `prompt + delivered output` and the remaining
        `max_tokens`) needs the server's support; a client would attempt it here instead.
        """
        reason = str(error) if isinstance(error, StreamCut | ClientError) else repr(error)
        return StreamInterruptedError(reason, self.chunks, self.chars, self.tokens)


def parse_sse_line(line: str, progress: StreamProgress) -> dict[str, Any] | None:
    """The event of one SSE line (None for blank lines, comments and `[DONE]`).

    An in-band `{"error": ...}` event raises StreamCut with the server's message and type.
    """
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        progress.done = True
        return None
    try:
        event = json.loads(data)
    except ValueError:
        raise StreamCut(f"unreadable event {data[:80]!r}") from None
    if "error" in event:
        error = event["error"] or {}
        message = error.get("message", "unknown error")
        raise StreamCut(f"the server reported: {message}", error.get("type"))
    progress.chunks += 1
    for choice in event.get("choices", []):
        delta = choice.get("delta") or {}
        text = choice.get("text") or delta.get("content") or ""
        progress.add(choice.get("index", 0), text, choice.get("finish_reason"))
    return event
