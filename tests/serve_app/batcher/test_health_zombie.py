"""Zombie detection through Serve: while no model replica answers (all stopped, alive to
Ray), the ingress's /health is 503, and 200 again once they answer. (Failover under load,
for every fault, is tests/serve_app/chaos/.)"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.serve_app.conftest import SPARE_APP

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def replica_pids() -> list[int]:
    from ray._private import state

    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["State"] == "ALIVE" and f"{SPARE_APP}#ModelReplica" in (actor["Name"] or "")
    ]


def test_health_is_503_while_no_replica_can_answer_and_200_again_after(spare_app_url):
    assert httpx.get(spare_app_url + "/health", timeout=30).status_code == 200
    pids = replica_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # alive to Ray, but no engine answers: a zombie
    try:
        response = httpx.get(spare_app_url + "/health", timeout=30)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers["retry-after"]
    deadline = time.monotonic() + 60
    while httpx.get(spare_app_url + "/health", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "health did not recover"
        time.sleep(0.5)
