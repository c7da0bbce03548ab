"""The running replicas of one Serve deployment, as Serve's own routers see them, each with
a probe of its health check: what the ingress's ReplicaHealth polls
(serve_app/ingress/replica_health.py).

Serve's controller pushes a deployment's running replicas to every router over a long
poll (one pending call, answered on change); this subscribes the same way, so knowing the
replicas costs no call per poll. A probe calls the replica actor's `check_health`, the
method Serve's controller calls: it runs the deployment's own `check_health`
(serve_app/replica/deployment.py). Serve has no public API for either, so the internals
used (`LongPollClient`, `DEPLOYMENT_TARGETS`, `RunningReplicaInfo`, the controller's
name) stay in this one file; tests/serve_app/batcher/test_health_zombie.py runs it
against the locked Ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import ray
from ray.serve._private.common import DeploymentID, DeploymentTargetInfo, RunningReplicaInfo
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve._private.long_poll import LongPollClient, LongPollNamespace

from serve_app.ingress.replica_health import Probe

FIRST_UPDATE_TIMEOUT_S = 10.0  # the controller answers a new long poll at once


class ServeReplicas:
    """`await replicas()`: replica id -> probe, for the deployment's running replicas."""

    def __init__(self, app_name: str, deployment_name: str) -> None:
        self._deployment = DeploymentID(name=deployment_name, app_name=app_name)
        self._probes: dict[str, Probe] = {}
        self._client: LongPollClient | None = None
        self._updated = asyncio.Event()  # set by the subscription's first update

    async def replicas(self) -> Mapping[str, Probe]:
        """The running replicas as last pushed. Subscribes on the running event loop first
        (also after the controller restarted: a long poll then ends) and waits for the
        first answer; raises TimeoutError if none comes."""
        if self._client is None or not self._client.is_running:
            self._updated.clear()
            self._subscribe()
        await asyncio.wait_for(self._updated.wait(), FIRST_UPDATE_TIMEOUT_S)
        return self._probes

    def stop(self) -> None:
        if self._client is not None:
            self._client.stop()

    def _subscribe(self) -> None:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        key = (LongPollNamespace.DEPLOYMENT_TARGETS, self._deployment)
        self._client = LongPollClient(
            controller,
            {key: self._update},
            call_in_event_loop=asyncio.get_running_loop(),
            client_id=f"serve_app replica health of {self._deployment.name}",
        )

    def _update(self, targets: DeploymentTargetInfo) -> None:
        self._probes = {
            info.replica_id.unique_id: (
                self._probes.get(info.replica_id.unique_id) or _health_check(info)
            )
            for info in targets.running_replicas
        }
        self._updated.set()


def _health_check(info: RunningReplicaInfo) -> Probe:
    actor = None

    async def probe() -> object:
        nonlocal actor
        if actor is None:
            actor = info.get_actor_handle()
        return await actor.check_health.remote()

    return probe
