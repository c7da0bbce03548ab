"""Zombie detection through Serve: the ingress's /health answers from its cached probes of
every model replica (serve_app/ingress/replica_health.py). One zombie (stopped, alive to
Ray) among healthy replicas leaves it 200, at once, every time; with every replica a
zombie it is 503 naming the state, and 200 again once they answer. (Failover under load,
for every fault, is tests/serve_app/chaos/.)"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.serve_app.conftest import SPARE_APP, SPARE_HEALTH_PERIOD_S, SPARE_HEALTH_TIMEOUT_S

pytestmark = [pytest.mark.slow, pytest.mark.ray]

FAST_S = 1.0  # a cached answer; asking a zombie through the router took 5 s and gave 503


def replica_pids() -> list[int]:
    from ray._private import state

    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["State"] == "ALIVE" and f"{SPARE_APP}#ModelReplica" in (actor["Name"] or "")
    ]


def health(url: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.get(url + "/health", timeout=30)
    return response, time.monotonic() - started


def test_health_stays_200_with_one_zombie_and_is_503_naming_it_when_none_answers(
    spare_app_url,
):
    assert health(spare_app_url)[0].status_code == 200
    pids = replica_pids()
    assert len(pids) == 2, pids
    stopped: list[int] = []
    try:
        os.kill(pids[0], signal.SIGSTOP)  # alive to Ray, but no engine answers: a zombie
        stopped.append(pids[0])
        # Long enough for the zombie's probe to time out: the cache then knows it.
        sample_until = time.monotonic() + SPARE_HEALTH_PERIOD_S + SPARE_HEALTH_TIMEOUT_S + 1
        while time.monotonic() < sample_until:
            response, elapsed_s = health(spare_app_url)
            assert response.status_code == 200, response.text
            assert elapsed_s < FAST_S
        os.kill(pids[1], signal.SIGSTOP)
        stopped.append(pids[1])
        deadline = time.monotonic() + 3 * (SPARE_HEALTH_PERIOD_S + SPARE_HEALTH_TIMEOUT_S)
        while (response := health(spare_app_url)[0]).status_code == 200:
            assert time.monotonic() < deadline, "health stayed 200 with no replica answering"
            time.sleep(0.2)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "unavailable" and response.headers["retry-after"]
    assert error["message"] == (
        "no model replica can serve: 0 of 2 model replicas healthy,"
        " 2 not answering their health check"
    )
    deadline = time.monotonic() + 60
    while health(spare_app_url)[0].status_code != 200:
        assert time.monotonic() < deadline, "health did not recover"
        time.sleep(0.2)
