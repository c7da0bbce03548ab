"""The Ray nodes being drained right now (a spot notice, `ray drain-node`) and their deadlines.

Read from the GCS, the same table Serve's controller reads to migrate replicas off such
nodes, at most once per `refresh_s` and never on the caller's event loop: the GCS call
blocks, so it runs in a worker thread and the caller sees the last answer until the next
one arrives. A process that is not connected to Ray (unit tests, a local engine) sees no
draining node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

REFRESH_S = 1.0  # how stale the view may get: well inside the shortest notice (30 s, GCP)


def query_gcs() -> dict[str, float]:
    """{node id (hex): drain deadline in Unix seconds, 0.0 for none} from the GCS."""
    import ray
    from ray._private.state import state  # what Serve's controller reads (no public API yet)

    if not ray.is_initialized():
        return {}
    return {
        node_id: deadline_ms / 1000 for node_id, deadline_ms in state.get_draining_nodes().items()
    }


class DrainingNodes:
    """A cached, non-blocking view of the cluster's draining nodes."""

    def __init__(
        self,
        refresh_s: float = REFRESH_S,
        query: Callable[[], dict[str, float]] = query_gcs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh_s = refresh_s
        self._query = query
        self._clock = clock
        self._deadlines: dict[str, float] = {}
        self._asked_s = float("-inf")
        self._pending: asyncio.Future | None = None

    def deadlines(self) -> dict[str, float]:
        """The last answer; asks again in the background once it is `refresh_s` old."""
        now = self._clock()
        if self._pending is None and now - self._asked_s >= self._refresh_s:
            self._asked_s = now
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, self._query)
            self._pending.add_done_callback(self._answered)
        return self._deadlines

    async def refreshed(self) -> dict[str, float]:
        """A fresh answer, waited for (for a loop that polls anyway)."""
        self._asked_s = float("-inf")
        self.deadlines()
        assert self._pending is not None
        with contextlib.suppress(Exception):  # logged by _answered; the last view stands
            await asyncio.shield(self._pending)
        return self._deadlines

    def _answered(self, future: asyncio.Future) -> None:
        self._pending = None
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:  # a GCS hiccup: keep the last view, ask again next time
            logger.warning("could not read the draining nodes from the GCS: %r", error)
            return
        self._deadlines = future.result()
