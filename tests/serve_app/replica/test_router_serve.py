"""DrainAwareRouter inside Serve, on the spare app's two model replicas: a call's RoutingHint
reaches the router through the handle call's keyword arguments, Serve's router reports the
replica that accepted the call (`on_request_routed`), and the calls that avoid a replica
all go to the other one (a request's resumes avoid the replicas that failed it)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from serve_app.engine.sampling_params import SamplingParams
from serve_app.messages import BatchRequest
from serve_app.routing_hint import RoutingHint
from tests.serve_app.conftest import SPARE_APP

pytestmark = [pytest.mark.ray]


def test_serve_routes_a_call_off_the_replicas_its_hint_avoids(spare_app_url):
    from ray import serve

    from serve_app.app import REPLICA_NAME

    handle = serve.get_deployment_handle(REPLICA_NAME, app_name=SPARE_APP).options(
        stream=True, method_name="generate_batch"
    )
    params = SamplingParams(max_tokens=1, temperature=0)

    async def call(avoid: frozenset[str]) -> list[str]:
        """The replicas Serve reported accepting one call (on its router's thread)."""
        routed: list[str] = []
        hint = RoutingHint(avoid, on_routed=routed.append)
        request = BatchRequest(uuid.uuid4().hex, [1, 2, 3], params)
        async for _ in handle.remote([request], routing=hint):
            pass
        return routed

    async def run():
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while len(set(seen)) < 2:  # both replicas run and this handle's router knows them
            assert time.monotonic() < deadline, f"one replica only: {seen}"
            seen += await call(frozenset())
        return seen[0], [await call(frozenset({seen[0]})) for _ in range(8)]

    avoided, routed = asyncio.run(run())
    assert all(len(replicas) == 1 and replicas[0] != avoided for replicas in routed), routed
