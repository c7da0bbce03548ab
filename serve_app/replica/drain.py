"""A model replica's side of a node drain: hand its requests back before the deadline.

When the replica's Ray node is being drained (the preemption watcher on a spot notice, or
`ray drain-node`), Serve starts a replacement elsewhere and callers stop sending this
replica new batches (serve_app/replica/router.py). The requests it is running keep running
while they can; `replica.drain_handback_s` before the node's deadline, every one still
running is handed back (`BatchRunner.hand_back`: a ReplicaDrainingError its batcher resumes
on another replica with the tokens so far) instead of being cut off with the machine. A
drain without a deadline lets them finish here.
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
        draining: DrainingNodes | None = None,
        clock: Callable[[], float] = time.time,  # Unix seconds, as the GCS's deadlines
        poll_s: float = REFRESH_S,
    ) -> None:
        self._node_id = node_id
        self._handback_s = handback_s
        self._hand_back = hand_back
        self._draining = draining or DrainingNodes(refresh_s=poll_s)
        self._clock = clock
        self._poll_s = poll_s
        self.deadline_s: float | None = None  # the node's drain deadline once seen (0: none)

    async def watch(self) -> None:
        """Poll until the requests have been handed back (run it as a task)."""
        while True:
            deadlines = await self._draining.refreshed()
            if self._node_id in deadlines and self.deadline_s is None:
                self.deadline_s = deadlines[self._node_id]
                logger.warning(
                    "node %s is draining (deadline in %s): no new batches here; running "
                    "requests are handed back %.0f s before it",
                    self._node_id,
                    f"{self.deadline_s - self._clock():.0f} s" if self.deadline_s else "none",
                    self._handback_s,
                )
            wait_s = self._poll_s
            if self.deadline_s:
                handback_at = self.deadline_s - self._handback_s
                if self._clock() >= handback_at:
                    logger.warning("node %s drains now: handing requests back", self._node_id)
                    self._hand_back(ReplicaDrainingError(f"node {self._node_id} is draining"))
                    return
                wait_s = min(wait_s, handback_at - self._clock())
            await asyncio.sleep(wait_s)
