"""AsyncEngine: the LLMEngine stepping in a background thread, with async output sinks.

Only the engine thread touches the LLMEngine; callers talk to it through a command queue.
Outputs come back through `Mailbox`es: a caller registers many requests with one mailbox
and receives ONE list per engine step holding all of their outputs (one wake-up of the
caller's event loop per step, whatever the number of requests). `generate` is the
one-request form. Aborting a request (or leaving `generate` early) frees its KV blocks.

The engine thread also builds the LLMEngine, so that loading and stepping run their OpenMP
work on one thread: each extra thread that opens OpenMP regions gets its own libgomp pool,
and more pool threads than CPUs made every region pay a sleeping worker's wake-up
(bench/README.md, "one OpenMP pool").
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from serve_app.engine.config import EngineConfig
from serve_app.engine.engine import EngineStats, LLMEngine
from serve_app.engine.errors import EngineDeadError
from serve_app.engine.mailbox import EngineRequest, Mailbox, RequestFailure, SinkItem
from serve_app.engine.request_output import RequestOutput
from serve_app.engine.sampling_params import SamplingParams


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
        self._sinks: dict[str, Mailbox] = {}  # live request id -> where its outputs go
        # Engine thread only: the mailbox each sequence was added with, so that an id aborted
        # and added again (a failover resumed here) never hears its old sequence's last step.
        self._owners: dict[str, Mailbox] = {}
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
    def add_requests(self, requests: list[EngineRequest], sink: Mailbox) -> None:
        """Queue requests whose outputs go to `sink`. An invalid request is not queued: its
        RequestFailure goes to the sink at once."""
        self._raise_if_dead()
        accepted = []
        rejected: list[SinkItem] = []
        for request in requests:
            try:
                self.engine.validate_request(request.prompt_ids, request.params, request.output_ids)
            except ValueError as error:
                rejected.append(RequestFailure(request.request_id, error))
                continue
            self._sinks[request.request_id] = sink
            accepted.append(request)
        if rejected:
            sink.put(rejected)
        if accepted:
            self._send(("add", accepted, sink))

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
        sink = Mailbox.on_running_loop()
        self.add_requests([EngineRequest(request_id, prompt_token_ids, sampling_params)], sink)
        finished = False
        try:
            while not finished:
                for item in await sink.take():
                    if isinstance(item, RequestFailure):
                        raise item.error or EngineDeadError(f"request {request_id} was aborted")
                    finished = item.finished
                    yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV blocks; its sink hears nothing more of it."""
        if self._sinks.pop(request_id, None) is not None:
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
    def max_num_seqs(self) -> int:
        return self._config.max_num_seqs

    @property
    def num_active_streams(self) -> int:
        """Requests whose outputs someone still waits for."""
        return len(self._sinks)

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
                    self._deliver(self.engine.step())
                else:
                    self._wakeup.wait(timeout=1.0)
                    self._wakeup.clear()
                self._last_progress = time.monotonic()
        except BaseException as error:  # every failure must reach the callers
            self._error = error
            self._fail_all(EngineDeadError(f"the engine loop failed: {error!r}"))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """One push per sink per step, however many of its requests produced a token."""
        by_sink: dict[Mailbox, list[SinkItem]] = {}
        for output in outputs:
            request_id = output.request_id
            sink = self._owners.get(request_id)
            if output.finished:
                self._owners.pop(request_id, None)
            if sink is None or self._sinks.get(request_id) is not sink:
                continue  # aborted while the step ran (maybe added again since)
            if output.finished:
                del self._sinks[request_id]
            by_sink.setdefault(sink, []).append(output)
        for sink, items in by_sink.items():
            sink.push(items)

    def _fail_all(self, error: BaseException) -> None:
        by_sink: dict[Mailbox, list[SinkItem]] = {}
        for request_id, sink in list(self._sinks.items()):
            by_sink.setdefault(sink, []).append(RequestFailure(request_id, error))
        self._sinks.clear()
        for sink, items in by_sink.items():
            sink.push(items)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, requests, sink = command
                for request in requests:
                    if self._sinks.get(request.request_id) is not sink:
                        continue  # the caller left before the engine saw the request
                    try:
                        self.engine.add_request(
                            request.prompt_ids,
                            request.params,
                            request.request_id,
                            request.output_ids,
                        )
                    except ValueError as error:
                        del self._sinks[request.request_id]
                        sink.push([RequestFailure(request.request_id, error)])
                        continue
                    self._owners[request.request_id] = sink
            else:
                self._owners.pop(command[1], None)
                self.engine.abort(command[1])
