"""A model replica's side of a node drain: hand its requests back before the deadline.

When the replica's Ray node is being drained (the preemption watcher on a spot notice, or
`ray drain-node`), Serve starts a replacement elsewhere and callers stop sending this
replica new batches (serve_app/replica/router.py). The requests it is running keep running
while they can; `replica.drain_handback_s` before the node's deadline, every one still
running is handed back (`BatchRunner.hand_back`: a ReplicaDrainingError its batcher resumes
on another replica with the tokens so far) instead of being cut off with the machine. A
drain without a deadline lets them finish here.

The deadline is read again on every poll: a drain re-issued with a new deadline moves the
hand-back with it. A hand-back lasts only while it is due: once the node leaves the
drain table (the drain was cancelled, the node stays) or its deadline moves out past the
hand-back moment, the replica takes new batches again (`BatchRunner.resume`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serve_app.draining_nodes import REFRESH_S, DrainingNodes
from serve_app.messages import ReplicaDrainingError

logger = logging.getLogger(__name__)


class DrainHandback:
    def __init__(
        self,
        node_id: str,
        handback_s: float,
        hand_back: Callable[[BaseException], None],
        resume: Callable[[], None],
        draining: DrainingNodes | None = None,
        clock: Callable[[], float] = time.time,  # Unix seconds, as the GCS's deadlines
        poll_s: float = REFRESH_S,
    ) -> None:
        self._node_id = node_id
        self._handback_s = handback_s
        self._hand_back = hand_back
        self._resume = resume
        self._draining = draining or DrainingNodes(refresh_s=poll_s)
        self._clock = clock
        self._poll_s = poll_s
        self.deadline_s: float | None = None  # the node's current drain deadline (0: none)
        self.handed_back = False  # requests are being handed back (until the drain ends)

    async def watch(self) -> None:
        """Follow the node's drain for as long as the replica lives (run it as a task)."""
        while True:
            deadlines = await self._draining.refreshed()
            self._follow(deadlines.get(self._node_id))
            wait_s = self._poll_s
            if self.deadline_s and not self.handed_back:
                wait_s = min(wait_s, self.deadline_s - self._handback_s - self._clock())
            await asyncio.sleep(max(wait_s, 0.0))

    def _follow(self, deadline_s: float | None) -> None:
        """Apply the node's current drain deadline (None: the node is not draining)."""
        if deadline_s != self.deadline_s:
            self._log_change(deadline_s)
            self.deadline_s = deadline_s
        due = bool(deadline_s) and self._clock() >= deadline_s - self._handback_s
        if due and not self.handed_back:
            logger.warning("node %s drains now: handing requests back", self._node_id)
            self._hand_back(ReplicaDrainingError(f"node {self._node_id} is draining"))
        elif self.handed_back and not due:
            logger.warning("node %s no longer drains now: taking new batches", self._node_id)
            self._resume()
        self.handed_back = due

    def _log_change(self, deadline_s: float | None) -> None:
        if deadline_s is None:
            logger.warning("node %s is no longer draining", self._node_id)
            return
        logger.warning(
            "node %s is draining (deadline in %s): no new batches here; running "
            "requests are handed back %.0f s before it",
            self._node_id,
            f"{deadline_s - self._clock():.0f} s" if deadline_s else "none",
            self._handback_s,
        )
