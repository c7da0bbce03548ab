"""The Ray nodes being drained right now (a spot notice, `ray drain-node`) and their deadlines.

Read from the GCS, the same table Serve's controller reads to migrate replicas off such
nodes, at most once per `refresh_s` and never on the caller's event loop: the GCS call
blocks, so it runs in a worker thread and the caller sees the last answer until the next
one arrives. A process that is not connected to Ray (unit tests, a local engine) sees no
draining node.

Ray has no public API for this table yet, so the private one (`DRAIN_API`) is used here
and nowhere else, behind a guard: the first DrainingNodes of a process checks that the
installed Ray has it with the expected shape and, if not, logs one line naming the Ray
version and what is missing, and every view stays empty (no drain is seen: replicas on a
draining node are neither routed around nor hand their requests back). An answer of
another shape is an error naming the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

REFRESH_S = 1.0  # how stale the view may get: well inside the shortest notice (30 s, GCP)
DRAIN_API = "ray._private.state.state.get_draining_nodes"  # () -> {node id hex: deadline ms}
_UNSEEN = "node drains will not be seen (no routing around, no hand-back)"


def drain_api_problem() -> str | None:
    """One line naming the Ray version and what of `DRAIN_API` it lacks; None if it has it."""
    import ray

    try:
        from ray._private import state as state_module
    except ImportError as error:
        return f"Ray {ray.__version__} has no ray._private.state ({error}): {_UNSEEN}"
    table = getattr(getattr(state_module, "state", None), "get_draining_nodes", None)
    if not callable(table):
        return f"Ray {ray.__version__} has no {DRAIN_API}(): {_UNSEEN}"
    try:
        inspect.signature(table).bind()
    except TypeError:
        return (
            f"Ray {ray.__version__}'s {DRAIN_API}{inspect.signature(table)} is not callable "
            f"without arguments: {_UNSEEN}"
        )
    except ValueError:  # no signature to read (a builtin): call it and see
        pass
    return None


@functools.cache
def drain_api_present() -> bool:
    """`drain_api_problem`, checked and logged once per process."""
    problem = drain_api_problem()
    if problem is not None:
        logger.warning(problem)
    return problem is None


def deadlines_from(table: object) -> dict[str, float]:
    """`DRAIN_API`'s answer ({node id hex: deadline in Unix ms, 0 for none}) in seconds."""
    if not isinstance(table, Mapping) or not all(
        isinstance(node_id, str) and isinstance(deadline_ms, int | float)
        for node_id, deadline_ms in table.items()
    ):
        import ray

        raise TypeError(
            f"Ray {ray.__version__}'s {DRAIN_API}() answered {table!r:.200}, expected "
            "{node id hex: deadline in Unix ms}"
        )
    return {node_id: deadline_ms / 1000 for node_id, deadline_ms in table.items()}


def query_gcs() -> dict[str, float]:
    """{node id (hex): drain deadline in Unix seconds, 0.0 for none} from the GCS."""
    import ray

    if not ray.is_initialized() or not drain_api_present():
        return {}
    from ray._private.state import state  # what Serve's controller reads (no public API yet)

    return deadlines_from(state.get_draining_nodes())


class DrainingNodes:
    """A cached, non-blocking view of the cluster's draining nodes."""

    def __init__(
        self,
        refresh_s: float = REFRESH_S,
        query: Callable[[], dict[str, float]] = query_gcs,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if query is query_gcs:
            drain_api_present()  # at start: says once if this Ray cannot show drains
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
