"""What DrainAwareRouter's tests hand it: stand-ins for Serve's RunningReplica, and the
router itself built as Serve's router factory builds it, with a drain table of the test's
own (tests/serve_app/replica/test_router.py, tests/serve_app/batcher/test_failover_local.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import ReplicaID

from serve_app.draining_nodes import DrainingNodes
from serve_app.replica.router import DrainAwareRouter


@dataclass(frozen=True)
class Replica:
    """What the router reads of Serve's RunningReplica."""

    name: str
    node_id: str

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(self.name, DeploymentID(name="ModelReplica", app_name="llm"))


def router_seeing(draining: dict[str, float]) -> DrainAwareRouter:
    """The router (its constructor, then initialize_state) seeing `draining` as the table."""
    router = DrainAwareRouter(
        deployment_id=DeploymentID(name="ModelReplica", app_name="llm"),
        handle_source=DeploymentHandleSource.REPLICA,  # the batcher's handle
    )
    router.initialize_state()
    router._draining = DrainingNodes(refresh_s=3600, query=lambda: draining)
    return router
