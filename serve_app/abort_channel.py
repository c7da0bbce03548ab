"""AbortChannel: how a caller aborts ONE request of a batch call on the replica serving it.

Both hops of the graph are batch calls (`generate_batch`: ingress -> batcher, batcher ->
model replica). Serve routes every handle call on its own, so an `abort(request_id)` call
made through a deployment handle could land on a different replica than the batch.
Instead each server replica owns one small AbortChannel actor (no CPU, on its node) and
names it in the first message of every batch stream; the caller sends aborts straight to
that actor, and the server long-polls it (`take`) and cancels those requests. The actor
is owned by the server replica, so it dies with it; if the actor dies the replica starts
a new one for later batches. Cancelling a whole batch needs no channel: cancelling the
batch stream cancels its requests.

The stream carries the actor's name (a named actor in ABORT_CHANNEL_NAMESPACE), not its
handle; the caller's AbortSender looks a name up once, off its event loop, the first time
it has an abort for that server, so the common path (no abort) costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = 1.0  # after a failed poll, before the next (never a tight loop)
ABORT_CHANNEL_NAMESPACE = "serve_app_abort_channels"
MAX_CACHED_CHANNELS = 1024  # handles the batcher keeps (one per replica it has aborted on)


@ray.remote(num_cpus=0)
class AbortChannel:
    """A mailbox of request ids to abort; async actor, so `take` waits without a thread."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._ready = asyncio.Event()

    async def abort(self, request_ids: list[str]) -> None:
        self._pending.extend(request_ids)
        self._ready.set()

    async def take(self) -> list[str]:
        """Wait until some ids are pending, then hand them all over."""
        await self._ready.wait()
        self._ready.clear()
        taken, self._pending = self._pending, []
        return taken


class AbortListener:
    """Inside a server replica: owns its AbortChannel and applies what arrives on it."""

    def __init__(self, on_abort: Callable[[list[str]], None]) -> None:
        self._on_abort = on_abort
        self.channel_name = ""
        self.channel = self._new_channel()
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                request_ids = await self.channel.take.remote()
            except asyncio.CancelledError:
                raise
            except RayActorError:
                logger.warning("the abort channel actor died; starting a new one")
                self.channel = self._new_channel()
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            except Exception:
                logger.exception("the abort channel failed; single-request aborts are delayed")
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            self._on_abort(request_ids)

    def _new_channel(self):  # -> AbortChannel actor handle, on this node when it has room
        node_id = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=True)
        self.channel_name = f"abort-channel-{uuid.uuid4().hex}"
        return AbortChannel.options(
            name=self.channel_name,
            namespace=ABORT_CHANNEL_NAMESPACE,
            scheduling_strategy=strategy,
        ).remote()

    def close(self) -> None:
        self._task.cancel()


class LazyAbortListener:
    """An AbortListener started on first use, and only inside a Ray actor: a server object
    used without Ray (unit tests) names no channel."""

    def __init__(self, on_abort: Callable[[list[str]], None]) -> None:
        self._on_abort = on_abort
        self._listener: AbortListener | None = None

    def channel_name(self) -> str | None:
        if self._listener is None:
            inside_an_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id()
            if not inside_an_actor:
                return None
            self._listener = AbortListener(self._on_abort)
        return self._listener.channel_name


def lookup_abort_channel(name: str) -> Any:
    """The AbortChannel actor handle of that name (blocking: a GCS lookup)."""
    return ray.get_actor(name, namespace=ABORT_CHANNEL_NAMESPACE)


class AbortSender:
    """Inside a caller (ingress, batcher): sends ids to the AbortChannel a batch stream named.

    `send` never blocks the event loop: the first abort for a channel looks its name up in a
    worker thread (then the handle is cached); later ones go straight out. A channel that
    cannot be found (its replica died) is logged and dropped: that replica's batches are
    ending anyway.
    """

    def __init__(self, lookup: Callable[[str], Any] = lookup_abort_channel) -> None:
        self._lookup = lookup
        self._handles: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()

    def send(self, channel_name: str, request_ids: list[str]) -> None:
        handle = self._handles.get(channel_name)
        if handle is not None:
            handle.abort.remote(request_ids)  # fire and forget
            return
        task = asyncio.get_running_loop().create_task(self._send_later(channel_name, request_ids))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_later(self, channel_name: str, request_ids: list[str]) -> None:
        try:
            handle = self._handles.get(channel_name) or await asyncio.to_thread(
                self._lookup, channel_name
            )
        except Exception:
            logger.warning(
                "abort channel %s not found; dropping aborts %s", channel_name, request_ids
            )
            return
        if len(self._handles) >= MAX_CACHED_CHANNELS:
            self._handles.clear()  # replicas come and go; the live ones are looked up again
        self._handles[channel_name] = handle
        handle.abort.remote(request_ids)
