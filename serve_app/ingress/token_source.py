"""The one interface between the ingress and whatever produces tokens (the micro-batcher, or
the replicas directly): `TokenStreamer.stream(prompt_ids, params, request_id)`
yields `TokenChunk`s, the last with `finished` set. Leaving the iteration early cancels the
request downstream, which aborts it in the engine and frees its KV blocks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import TokenChunk


class TokenStreamer(Protocol):
    def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]: ...


class HandleTokenStreamer:
    """A TokenStreamer over a Serve deployment handle whose `generate` streams TokenChunks."""

    def __init__(self, handle) -> None:  # ray.serve.handle.DeploymentHandle
        self._handle = handle.options(stream=True, method_name="generate")

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenChunk]:
        responses = self._handle.remote(prompt_ids, params, request_id)
        finished = False
        try:
            async for chunk in responses:
                finished = chunk.finished
                yield chunk
        finally:
            if not finished:
                # The caller left (disconnect, stop string, error): stop the replica's
                # generator so the engine aborts the request now, not at max_tokens.
                responses.cancel()
