"""DrainAwareRouter: replicas on draining nodes get no new batch while another replica can
take it; when every replica drains, they still serve (their batches are handed back)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from serve_app.draining_nodes import DrainingNodes
from serve_app.replica.router import DrainAwareRouter


@dataclass(frozen=True)
class Replica:
    name: str
    node_id: str


def router_seeing(draining: dict[str, float]) -> DrainAwareRouter:
    router = DrainAwareRouter.__new__(DrainAwareRouter)  # no Serve router machinery needed
    router.initialize_state()
    router._draining = DrainingNodes(refresh_s=3600, query=lambda: draining)
    return router


def choices(draining: dict[str, float], replicas: list[Replica], rounds: int = 50) -> set[str]:
    """Every replica the router offered over `rounds` choices."""
    router = router_seeing(draining)

    async def run():
        await router._draining.refreshed()
        offered = set()
        for _ in range(rounds):
            ranks = await router.choose_replicas(replicas)
            assert len(ranks) == 1 and 1 <= len(ranks[0]) <= 2
            offered |= {replica.name for replica in ranks[0]}
        return offered

    return asyncio.run(run())


REPLICAS = [Replica("a", "n1"), Replica("b", "n2"), Replica("c", "n3")]


def test_without_a_drain_every_replica_is_offered():
    assert choices({}, REPLICAS) == {"a", "b", "c"}


def test_replicas_on_a_draining_node_are_not_offered_while_others_serve():
    assert choices({"n2": 1e12}, REPLICAS) == {"a", "c"}
    assert choices({"n1": 1e12, "n3": 0.0}, REPLICAS) == {"b"}


def test_when_every_node_drains_the_replicas_still_serve():
    assert choices({"n1": 1e12, "n2": 1e12, "n3": 1e12}, REPLICAS) == {"a", "b", "c"}
    assert asyncio.run(router_seeing({}).choose_replicas([])) == []
