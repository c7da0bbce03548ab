"""DrainAwareRouter: replicas on draining nodes get no new batch while another replica can
take it; when every replica drains, they still serve (their batches are handed back). A
call's RoutingHint keeps it off the replicas that failed its requests while another one
is left, and hears which replica accepted the call."""

from __future__ import annotations

import asyncio
import pickle

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest

from serve_app.routing_hint import RoutingHint
from tests.serve_app.replica.router_doubles import Replica, router_seeing


def pending(**kwargs) -> PendingRequest:
    """A call as Serve's router holds it (on a running loop: it makes a Future)."""
    metadata = RequestMetadata(request_id="call", internal_request_id="call")
    return PendingRequest(args=[[]], kwargs=kwargs, metadata=metadata)


def choices(
    draining: dict[str, float], replicas: list[Replica], rounds: int = 50, **call_kwargs
) -> set[str]:
    """Every replica the router offered over `rounds` choices (for a call with `call_kwargs`)."""
    router = router_seeing(draining)

    async def run():
        await router._draining.refreshed()
        offered = set()
        for _ in range(rounds):
            ranks = await router.choose_replicas(replicas, pending(**call_kwargs))
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


def test_a_call_avoids_the_replicas_that_failed_it_while_another_is_left():
    """Issue 26.2: a replica whose engine died while its actor lives stays routable and,
    empty, wins the two choices; the hint keeps the retries off it."""
    assert choices({}, REPLICAS, routing=RoutingHint(frozenset({"a"}))) == {"b", "c"}
    assert choices({}, REPLICAS, routing=RoutingHint(frozenset({"a", "c"}))) == {"b"}
    # A draining replica can still serve; one that failed the call cannot.
    assert choices({"n2": 1e12}, REPLICAS, routing=RoutingHint(frozenset({"a", "c"}))) == {"b"}
    # Nothing else left: the failed replicas are offered rather than none.
    assert choices({}, REPLICAS, routing=RoutingHint(frozenset({"a", "b", "c"}))) == {
        "a",
        "b",
        "c",
    }


def test_the_router_tells_the_call_which_replica_accepted_it():
    routed: list[str] = []
    hint = RoutingHint(frozenset(), on_routed=routed.append)
    router = router_seeing({})

    async def run():
        router.on_request_routed(pending(routing=hint), REPLICAS[1].replica_id, None)
        router.on_request_routed(pending(), REPLICAS[2].replica_id, None)  # no hint: nothing

    asyncio.run(run())
    assert routed == ["b"]
    # The hint reaches the replica without the caller's callback.
    assert (
        pickle.loads(pickle.dumps(hint)) == hint
        and pickle.loads(pickle.dumps(hint)).on_routed is None
    )
