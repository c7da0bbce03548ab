"""What crosses between the engine thread and its callers: requests in, per-step outputs out
through Mailboxes.

Kept apart from async_engine.py (which imports the engine, and so torch) because the
serving layers that never run the model, the ingress and the batcher, use these types too:
they start without importing torch (seconds and hundreds of MB per process).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from serve_app.engine.request_output import RequestOutput
from serve_app.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class EngineRequest:
    """One request for `add_requests`; `output_ids`: tokens it already generated elsewhere
    (a failover resume, see LLMEngine.add_request)."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RequestFailure:
    """A request that ended without output: rejected (`error` set) or aborted (None)."""

    request_id: str
    error: BaseException | None = None


SinkItem = RequestOutput | RequestFailure


@dataclass(eq=False, slots=True)
class Mailbox:
    """One consumer's inbox on its event loop: items arrive in lists (`push` from any
    thread, `put` on the loop) and `take` returns everything since the last take. The
    engine pushes one list per step; the serving layers fan out through them too."""

    loop: asyncio.AbstractEventLoop
    pending: list = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def on_running_loop(cls) -> Mailbox:
        return cls(asyncio.get_running_loop())

    def push(self, items: list) -> None:
        """From any thread: hand over one step's items (one loop wake-up)."""
        # A closed caller loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.put, items)

    def put(self, items: list) -> None:
        """On the caller's loop."""
        self.pending.extend(items)
        self.ready.set()

    async def take(self) -> list:
        """Everything delivered since the last take (waits for at least one item)."""
        while not self.pending:
            self.ready.clear()
            await self.ready.wait()
        return self.take_nowait()

    def take_nowait(self) -> list:
        """Everything delivered since the last take, maybe nothing."""
        items, self.pending = self.pending, []
        return items
