"""DrainAwareRouter: how callers pick a model replica (Serve's request-router API).

Serve's default power-of-two-choices router with one rule added: a replica whose Ray node
is being drained (a spot notice, `ray drain-node`) gets no new batch while a replica on a
healthy node can take it. Serve keeps such a replica routable until its replacement runs,
and an emptying replica looks like the least loaded one, so without this rule it would
attract exactly the requests that are being moved off it. It still serves when it is the
only replica left (a batch it cannot finish is handed back: serve_app/replica/drain.py).
`on_request_routed` tells a call which replica accepted it (its RoutingHint,
serve_app/routing_hint.py): the call's watchdog then expects that replica's heartbeat.
"""

from __future__ import annotations

import random

from ray.serve.request_router import (
    FIFOMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from serve_app.draining_nodes import DrainingNodes
from serve_app.routing_hint import hint_in


class DrainAwareRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._draining = DrainingNodes()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        draining = self._draining.deadlines()
        serving = [replica for replica in candidate_replicas if replica.node_id not in draining]
        pool = serving or candidate_replicas
        # Two at random; Serve's router then probes both and takes the shorter queue.
        return [random.sample(pool, min(2, len(pool)))] if pool else []

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result
    ) -> None:
        hint = hint_in(pending_request.kwargs)
        if hint is not None:
            hint.routed(replica_id.unique_id)
