"""RequestState: what the micro-batcher knows about one live request.

Enough to resume the request on another replica (a later issue): the prompt, the tokens
generated so far, the sampling params (their seed included) and the finish state. A resumed
request would send `resume_prompt_ids()` with `remaining_max_tokens()` as its budget.
Unseeded sampled requests would resume with fresh randomness; seeded and greedy ones resume
exactly (seeded sampling depends on the seed and the output position only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import TokenChunk


@dataclass(slots=True)
class RequestState:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" once finished
    cancelled: bool = False  # the caller left before the request finished
    batch_id: int | None = None  # the forwarded batch serving it; None while queued

    @property
    def seed(self) -> int | None:
        return self.params.seed

    def record(self, chunk: TokenChunk) -> None:
        """Fold in one chunk the replica produced for this request."""
        assert not self.finished, f"request {self.request_id} got a chunk after finishing"
        self.output_ids.extend(chunk.token_ids)
        assert chunk.num_output_tokens == len(self.output_ids), (
            chunk.num_output_tokens,
            len(self.output_ids),
        )
        self.finished = chunk.finished
        self.finish_reason = chunk.finish_reason

    def resume_prompt_ids(self) -> list[int]:
        """What another replica would prefill to continue this request."""
        return self.prompt_ids + self.output_ids

    def remaining_max_tokens(self) -> int:
        return self.params.max_tokens - len(self.output_ids)
