"""BatchCall: the caller's side of one `generate_batch` stream (ingress -> batcher, batcher ->
model replica, or ingress -> replica with the batcher off).

One call carries many requests down and one stream of BatchMessages back, each holding
every request's new tokens since the last one. The call hands each message's chunks to
`deliver` in one go (the caller fans them out to its own waiters), tells every request
still open when the stream fails or ends early, and aborts single requests through the
AbortChannel the server named in its first message (serve_app/abort_channel.py); when the
last open request leaves, it cancels the whole stream instead. The call runs in a fresh
context, outside any caller's Serve request context, so that no single caller's
cancellation reaches a call it shares with others.

The watchdog: a call whose server is gone without a trace (a vanished node leaves a gRPC
stream open, with no error) fails every open request with BatchStreamSilentError, from the
moment it is sent. Until the first message it has `first_message_timeout_s` (generous: the
call may legitimately wait in Serve's router for a replica to start); once the model
replicas' router reports that a replica accepted it (`routing`, serve_app/routing_hint.py),
and between messages, `silence_timeout_s` (a replica sends at least a heartbeat every few
seconds). The same hint names the replica that accepted the call (`replica_id`) and the
replicas the call must avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import DeploymentUnavailableError

from serve_app.abort_channel import AbortSender
from serve_app.engine.errors import EngineDeadError
from serve_app.messages import BatchRequest, ReplicaDrainingError, TaggedChunk
from serve_app.routing_hint import ROUTING_KWARG, RoutingHint


class BatchAbortedError(RuntimeError):
    """A request of a batch call ended without the caller asking for it."""


class BatchStreamEndedError(RuntimeError):
    """The server ended a batch stream before all of its requests finished."""


class BatchStreamSilentError(RuntimeError):
    """A batch stream sent nothing, not even a heartbeat, for too long: its server is gone
    without a trace (a vanished node: no connection reset reaches a gRPC stream) or hung."""


# What a batch call fails with when its server is gone, dead or draining (not the request's
# fault): the batcher resumes such requests elsewhere (serve_app/batcher/failover.py), and
# what reaches a client is 503 + Retry-After (serve_app/ingress/downstream_errors.py).
REPLICA_GONE = (
    RayActorError,  # the replica actor died or is unreachable (ActorDiedError, ...)
    EngineDeadError,  # its engine loop stopped
    ReplicaDrainingError,  # its node is being drained: it handed the request back
    BatchStreamEndedError,  # its stream ended before the requests did
    BatchStreamSilentError,  # its stream went silent: a node gone without a trace, or hung
    DeploymentUnavailableError,  # no replica at the moment
)


class BatchCall:
    def __init__(
        self,
        handle,  # a DeploymentHandle with stream=True, method_name="generate_batch"
        requests: list[BatchRequest],
        deliver: Callable[[list[TaggedChunk]], None],
        abort_sender: AbortSender,
        on_first_token: Callable[[float], None] | None = None,
        silence_timeout_s: float | None = None,
        first_message_timeout_s: float | None = None,
        avoid_replicas: frozenset[str] = frozenset(),
    ) -> None:
        self._handle = handle
        self.requests = requests
        self.open: set[str] = {request.request_id for request in requests}
        self._deliver = deliver
        self._abort_sender = abort_sender
        self._on_first_token = on_first_token  # called with the seconds to the first token
        self._abort_channel: str | None = None
        self._unsent_aborts: list[str] = []
        self.task: asyncio.Task | None = None
        self._avoid = avoid_replicas
        self.replica_id: str | None = None  # the Serve replica that accepted the call
        # The watchdog (module docstring); loop times.
        self._silence_timeout_s = silence_timeout_s
        self._first_message_timeout_s = first_message_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent_s = 0.0
        self._last_message_s = 0.0  # or when a replica accepted the call
        self._heard_from_server = False  # a message arrived, or a replica accepted the call
        self._first_message = False
        self._silent: str | None = None  # why the watchdog cancelled the call
        self._watchdog: asyncio.TimerHandle | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), context=contextvars.Context()
        )
        return self.task

    @property
    def abort_channel(self) -> str | None:
        """The AbortChannel the server named in its first message (None before it): the
        channel is the serving replica's own actor, so it also says which replica this is."""
        return self._abort_channel

    def leave(self, request_id: str) -> None:
        """The caller of `request_id` left before its end: stop the work done for it."""
        if request_id not in self.open:
            return  # already ended
        self.open.discard(request_id)
        if not self.open:
            assert self.task is not None
            self.task.cancel()  # nobody left: cancelling the stream stops the whole batch
        elif self._abort_channel is None:
            self._unsent_aborts.append(request_id)  # sent once the server names its channel
        else:
            self._abort_sender.send(self._abort_channel, [request_id])

    async def _run(self) -> None:
        started_s = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._sent_s = self._loop.time()
        responses = self._send()
        self._arm_watchdog()
        stream_ended = False
        awaiting_first_token = self._on_first_token is not None
        try:
            async for message in responses:
                self._heard()
                if message.abort_channel is not None:
                    self._started(message.abort_channel)
                chunks = [tagged for tagged in message.chunks if tagged.request_id in self.open]
                for tagged in chunks:
                    if tagged.final:
                        self.open.discard(tagged.request_id)
                if awaiting_first_token and any(t.chunk is not None for t in chunks):
                    self._on_first_token(time.monotonic() - started_s)
                    awaiting_first_token = False
                if chunks:
                    self._deliver(chunks)
            stream_ended = True
            self._fail(BatchStreamEndedError("the batch stream ended before its requests did"))
        except asyncio.CancelledError:  # by `leave` once nobody waits, at shutdown, or silence
            if self._silent is not None:
                self._fail(BatchStreamSilentError(self._silent))
                return
            self._fail(BatchAbortedError("the batch call was cancelled"))
            raise
        except Exception as error:  # the server or the call failed: tell every open request
            stream_ended = True
            self._fail(error.cause if isinstance(error, RayTaskError) else error)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            if not stream_ended:
                responses.cancel()

    def _send(self):
        """Start the call; with a watchdog or replicas to avoid, with a RoutingHint."""
        watched = self._silence_timeout_s is not None or self._first_message_timeout_s is not None
        if not (watched or self._avoid):
            return self._handle.remote(self.requests)
        hint = RoutingHint(self._avoid, on_routed=self._routed_from_any_thread)
        return self._handle.remote(self.requests, **{ROUTING_KWARG: hint})

    def _routed_from_any_thread(self, replica_id: str) -> None:
        """The router's callback, on its own loop (maybe Serve's router thread)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # this loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._routed, replica_id)

    def _routed(self, replica_id: str) -> None:
        """A replica accepted the call: it answers within a heartbeat from now on."""
        if self.task is None or self.task.done():
            return
        self.replica_id = replica_id
        if not self._heard_from_server:
            self._heard_from_server = True
            self._last_message_s = asyncio.get_running_loop().time()
            self._arm_watchdog()  # the silence bound may come before the first-message one

    def _heard(self) -> None:
        """A message arrived: the server is alive."""
        self._last_message_s = asyncio.get_running_loop().time()
        first = not self._first_message
        self._heard_from_server = self._first_message = True
        # After the first, a timer already armed re-checks when it fires: none per message.
        if first or self._watchdog is None:
            self._arm_watchdog()

    def _deadline(self) -> tuple[float, str] | None:
        """When the watchdog fails the call if nothing more arrives, and why."""
        deadlines = []
        if not self._first_message and self._first_message_timeout_s is not None:
            timeout = self._first_message_timeout_s
            deadlines.append(
                (self._sent_s + timeout, f"no message from the server {timeout} s after the call")
            )
        if self._heard_from_server and self._silence_timeout_s is not None:
            timeout = self._silence_timeout_s
            server = f"replica {self.replica_id}" if self.replica_id else "the server"
            deadlines.append(
                (self._last_message_s + timeout, f"no message from {server} in {timeout} s")
            )
        return min(deadlines, default=None)

    def _arm_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        deadline = self._deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_at(deadline[0], self._check_silence)

    def _check_silence(self) -> None:
        assert self.task is not None
        self._watchdog = None
        deadline = self._deadline()
        if deadline is None:
            return
        if asyncio.get_running_loop().time() >= deadline[0]:
            self._silent = deadline[1]
            self.task.cancel()
        else:
            self._arm_watchdog()

    def _started(self, abort_channel: str) -> None:
        self._abort_channel = abort_channel
        if self._unsent_aborts:
            self._abort_sender.send(abort_channel, self._unsent_aborts)
            self._unsent_aborts = []

    def _fail(self, error: BaseException) -> None:
        if self.open:
            self._deliver([TaggedChunk(request_id, None, error) for request_id in self.open])
            self.open.clear()
