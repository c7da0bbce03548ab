"""DrainAwareRouter: how callers pick a model replica (Serve's request-router API).

Serve's default power-of-two-choices router with two rules added, each offering a replica
only while another replica can take the call instead:

- a replica whose Ray node is being drained (a spot notice, `ray drain-node`) gets no new
  batch. Serve keeps such a replica routable until its replacement runs, and an emptying
  replica looks like the least loaded one, so without this rule it would attract exactly
  the requests that are being moved off it. It still serves when it is the only replica
  left (a batch it cannot finish is handed back: serve_app/replica/drain.py);
- a call's retries avoid the replicas that failed its requests (the call's RoutingHint,
  serve_app/routing_hint.py): a replica whose engine died while its actor lives stays
  routable until Serve's next health check and, empty, looks like the best choice, so
  every backoff-spaced resume would land on it again.

`on_request_routed` tells the call which replica accepted it. No FIFOMixin: with it, Serve
hands the replica chosen for one pending call to the oldest pending call, whose hint may
exclude that very replica; Serve's default matching gives each call the replica chosen
for it.
"""

from __future__ import annotations

import random

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serve_app.draining_nodes import DrainingNodes
from serve_app.routing_hint import hint_in


class DrainAwareRouter(RequestRouter):
    def initialize_state(self, **kwargs) -> None:
        self._draining = DrainingNodes()

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        draining = self._draining.deadlines()
        hint = hint_in(pending_request.kwargs) if pending_request is not None else None
        avoid = hint.avoid if hint is not None else frozenset()
        fresh = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid]
        pool = (
            [r for r in fresh if r.node_id not in draining]
            or fresh  # a draining replica can still serve; one that failed the call cannot
            or [r for r in candidate_replicas if r.node_id not in draining]
            or candidate_replicas
        )
        # Two at random; Serve's router then probes both and takes the shorter queue.
        return [random.sample(pool, min(2, len(pool)))] if pool else []

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result
    ) -> None:
        hint = hint_in(pending_request.kwargs)
        if hint is not None:
            hint.routed(replica_id.unique_id)
