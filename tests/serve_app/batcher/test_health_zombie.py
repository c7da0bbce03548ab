"""Zombie detection through Serve: while no model replica answers (all stopped, alive to
Ray), the ingress's /health is 503, and 200 again once they answer. (Failover under load,
for every fault, is tests/serve_app/chaos/.)"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CHAOS_APP = "chaos"


@pytest.fixture(scope="module")
def chaos_url(live_app):
    from ray import serve

    from serve_app.app import build_app

    args = {
        **live_app.args,
        "replica": {**live_app.args["replica"], "num_replicas": 2, "num_cpus": 0.25},
        "ingress": {"num_cpus": 0.05},
        "batcher": {**live_app.args["batcher"], "num_cpus": 0.05},
    }
    serve.run(build_app(args), name=CHAOS_APP, route_prefix="/" + CHAOS_APP)
    yield f"{live_app.base_url}/{CHAOS_APP}"
    serve.delete(CHAOS_APP)


def replica_pids() -> list[int]:
    from ray._private import state

    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["State"] == "ALIVE" and f"{CHAOS_APP}#ModelReplica" in (actor["Name"] or "")
    ]


def test_health_is_503_while_no_replica_can_answer_and_200_again_after(chaos_url):
    assert httpx.get(chaos_url + "/health", timeout=30).status_code == 200
    pids = replica_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # alive to Ray, but no engine answers: a zombie
    try:
        response = httpx.get(chaos_url + "/health", timeout=30)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"]
    deadline = time.monotonic() + 60
    while httpx.get(chaos_url + "/health", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "health did not recover"
        time.sleep(0.5)
