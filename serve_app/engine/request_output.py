"""RequestOutput: what one engine step reports for one request."""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.engine.sequence import TokenLogprobs


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" once finished
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int = 0
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)
