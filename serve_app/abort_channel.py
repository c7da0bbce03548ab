"""AbortChannel: how the batcher aborts ONE request of a batch on the replica running it.

Serve routes every handle call on its own, so an `abort(request_id)` call made through the
replica deployment's handle could land on a different replica than the batch. Instead each
model replica owns one small AbortChannel actor (no CPU, on the replica's node) and names
it in the first message of every batch stream; the batcher sends aborts straight to that
actor, and the replica long-polls it (`take`) and cancels those requests, which aborts them
in the engine and frees their KV blocks. The actor is owned by the replica, so it dies with
it; if the actor dies the replica starts a new one for later batches. Cancelling a whole
batch needs no channel: cancelling the batch stream cancels its requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import ray
from ray.exceptions import RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = 1.0  # after a failed poll, before the next (never a tight loop)


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
    """Inside a replica: owns its AbortChannel and applies what arrives on it."""

    def __init__(self, on_abort: Callable[[list[str]], None]) -> None:
        self._on_abort = on_abort
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

    @staticmethod
    def _new_channel():  # -> AbortChannel actor handle, on this node when it has room
        node_id = ray.get_runtime_context().get_node_id()
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=True)
        return AbortChannel.options(scheduling_strategy=strategy).remote()

    def close(self) -> None:
        self._task.cancel()
