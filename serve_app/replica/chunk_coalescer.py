"""ChunkCoalescer: how many of a request's tokens a replica sends per streamed message.

Every streamed message costs work in each process it crosses (replica, batcher, ingress,
Serve's proxy, the client): on a small CPU machine that work competes with the engine
(bench/README.md measures it). `replica.stream_interval_tokens` N trades smoothness for
that: after the first token, which is never held, a request's tokens are held until N
are ready or the request finishes, then sent as one TokenChunk. N = 1 (the default) sends
every engine step's tokens at once. Holding never changes the tokens, only how they are
grouped into messages.
"""

from __future__ import annotations

from serve_app.messages import TokenChunk


class ChunkCoalescer:
    """One per request stream: `add` each engine chunk, send what it returns (if any)."""

    def __init__(self, interval_tokens: int) -> None:
        assert interval_tokens >= 1, interval_tokens
        self.interval_tokens = interval_tokens
        self._held: TokenChunk | None = None
        self._sent_a_token = False

    def add(self, chunk: TokenChunk) -> TokenChunk | None:
        """The chunk to send now (held tokens first), or None to hold it."""
        merged = chunk if self._held is None else _merge(self._held, chunk)
        due = (
            chunk.finished
            or not self._sent_a_token
            or len(merged.token_ids) >= self.interval_tokens
        )
        if not due:
            self._held = merged
            return None
        self._held = None
        self._sent_a_token = self._sent_a_token or bool(merged.token_ids)
        return merged


def _merge(earlier: TokenChunk, later: TokenChunk) -> TokenChunk:
    """Both chunks' tokens in order; counts and the finish state of the later one."""
    return TokenChunk(
        token_ids=earlier.token_ids + later.token_ids,
        finished=later.finished,
        finish_reason=later.finish_reason,
        num_prompt_tokens=later.num_prompt_tokens,
        num_output_tokens=later.num_output_tokens,
        logprobs=earlier.logprobs + later.logprobs,
    )
