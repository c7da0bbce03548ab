"""AsyncEngine: the LLMEngine stepping in a background thread, with per-request async streams.

Only the engine thread touches the LLMEngine; callers talk to it through a command queue,
and outputs come back through each request's asyncio.Queue on the caller's event loop.
Leaving a stream early (cancellation, `aclose`, an exception) aborts the request and frees
its KV blocks.

The engine thread also builds the LLMEngine, so that loading and stepping run their OpenMP
work (torch's CPU ops, oneDNN, the native kernels) on one thread. Every thread that opens
OpenMP regions gets a pool of worker threads from libgomp; once more pool threads exist
than CPUs, libgomp stops letting idle workers spin and each region pays a sleeping worker's
wake-up (~60 us here, ~80 regions per step of the `bench` model): decoding one request ran
at 13.9 ms per token against 6.6 ms with one pool (bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import EngineStats, LLMEngine
from serve_app.engine.request_output import RequestOutput
from serve_app.engine.sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    """The engine loop stopped (a step raised, or shutdown); no request can progress."""


@dataclass(slots=True)
class _Stream:
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue

    def push(self, item: RequestOutput | BaseException) -> None:
        # A closed caller loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.outputs.put_nowait, item)


class AsyncEngine:
    def __init__(
        self,
        config: EngineConfig,
        stall_timeout_s: float = 60.0,
        build_engine: Callable[[EngineConfig], LLMEngine] = LLMEngine,
    ) -> None:
        """Builds the engine with `build_engine(config)` on the engine thread; raises what
        building it raised."""
        self.engine: LLMEngine = None  # type: ignore[assignment]  # set before __init__ returns
        self._config = config
        self._build_engine = build_engine
        self._built = threading.Event()
        self.stall_timeout_s = stall_timeout_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._last_progress = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()
        self._built.wait()
        if self.engine is None:
            assert self._error is not None, "the engine thread sets one or the other"
            raise self._error

    # ---- caller side ------------------------------------------------------------------
    async def generate(
        self,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs; the last has `finished` set. Invalid requests raise
        RequestError before anything is queued."""
        self._raise_if_dead()
        self.engine.validate_request(prompt_token_ids, sampling_params)
        request_id = request_id or uuid.uuid4().hex
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        self._streams[request_id] = stream
        self._send(("add", request_id, list(prompt_token_ids), sampling_params))
        finished = False
        try:
            while not finished:
                item = await stream.outputs.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._send(("abort", request_id))

    def check_health(self) -> None:
        """Raise EngineDeadError if the loop died or has work but made no progress lately."""
        self._raise_if_dead()
        if not self._thread.is_alive():
            raise EngineDeadError("the engine loop thread is not running")
        stalled_for = time.monotonic() - self._last_progress
        if stalled_for > self.stall_timeout_s:
            raise EngineDeadError(f"the engine loop has made no progress for {stalled_for:.0f}s")
        self.engine.executor.check_health()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    @property
    def num_active_streams(self) -> int:
        return len(self._streams)

    def shutdown(self) -> None:
        self._stopped.set()
        self._wakeup.set()
        self._thread.join(timeout=10)
        self.engine.shutdown()

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"the engine loop failed: {self._error!r}") from self._error

    # ---- engine thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.engine = self._build_engine(self._config)
        except BaseException as error:
            self._error = error
            return
        finally:
            self._last_progress = time.monotonic()  # building is not a stall
            self._built.set()
        try:
            while not self._stopped.is_set():
                self._apply_commands()
                if self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        stream = self._streams.get(output.request_id)
                        if stream is not None:
                            stream.push(output)
                else:
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                self._last_progress = time.monotonic()
        except BaseException as error:  # every failure must reach the callers
            self._error = error
            for stream in list(self._streams.values()):
                stream.push(EngineDeadError(f"the engine loop failed: {error!r}"))

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt_token_ids, params = command
                if request_id not in self._streams:
                    continue  # the caller left before the engine saw the request
                try:
                    self.engine.add_request(prompt_token_ids, params, request_id)
                except ValueError as error:
                    self._streams[request_id].push(error)
            else:
                self.engine.abort(command[1])
