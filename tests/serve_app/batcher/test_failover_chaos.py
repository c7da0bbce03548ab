"""Failover and health through Serve. Under concurrent streaming load (greedy and seeded
requests) the busiest of two model replicas is killed mid-stream (SIGKILL, no notice):
every request completes with exactly the text and usage of a fault-free run of the same
requests, and the batcher counts its failovers. While no replica answers (all stopped),
the ingress's /health is 503, and 200 again once they answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

CHAOS_APP = "chaos"
NUM_REQUESTS = 8
MAX_TOKENS = 80


@pytest.fixture(scope="module")
def chaos_url(live_app):
    from ray import serve

    from serve_app.app import build_app

    args = {
        **live_app.args,
        "replica": {**live_app.args["replica"], "num_replicas": 2, "num_cpus": 0.25},
        "ingress": {"num_cpus": 0.05},
        "batcher": {
            **live_app.args["batcher"],
            "num_cpus": 0.05,
            "policy": {"max_batch_size": 2},  # several batches, over both replicas
            # Enough attempts to outlast Serve starting new replicas on a busy machine.
            "failover": {"max_attempts": 100, "max_backoff_s": 1.0},
        },
    }
    serve.run(build_app(args), name=CHAOS_APP, route_prefix="/" + CHAOS_APP)
    yield f"{live_app.base_url}/{CHAOS_APP}"
    serve.delete(CHAOS_APP)


def body(index: int) -> dict:
    sampled = {"temperature": 1.0, "top_p": 0.95, "seed": 100 + index} if index % 2 else {}
    return {
        "model": "tiny",
        "prompt": f"Chaos story {index}:",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        **sampled,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one(client: httpx.AsyncClient, url: str, index: int, first_token: asyncio.Event):
    async with client.stream("POST", url + "/v1/completions", json=body(index)) as response:
        assert response.status_code == 200, await response.aread()
        events = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                first_token.set()
    assert events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    return text, chunks[-1]["usage"]


def replica_pids() -> list[int]:
    from ray._private import state

    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["State"] == "ALIVE" and f"{CHAOS_APP}#ModelReplica" in (actor["Name"] or "")
    ]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def num_failovers() -> int:
    from ray import serve

    from serve_app.app import BATCHER_NAME

    batcher = serve.get_deployment_handle(BATCHER_NAME, app_name=CHAOS_APP)
    return batcher.stats.remote().result(timeout_s=30)["num_failovers"]


def kill_replicas_until_a_failover() -> None:
    """SIGKILL the busiest replica; if it held no request (no failover within 2 s), the other
    one too (Serve then starts new ones, and the requests wait for them)."""
    pids = replica_pids()
    assert len(pids) == 2, pids
    failovers_before = num_failovers()
    before = {pid: cpu_ticks(pid) for pid in pids}
    time.sleep(0.5)
    busiest = max(pids, key=lambda pid: cpu_ticks(pid) - before[pid])
    os.kill(busiest, signal.SIGKILL)
    time.sleep(2.0)
    if num_failovers() == failovers_before:
        os.kill(next(pid for pid in pids if pid != busiest), signal.SIGKILL)


def run_load(url: str, headers: dict, kill: bool) -> list:
    async def run():
        first_token = asyncio.Event()
        async with httpx.AsyncClient(headers=headers, timeout=300) as client:
            tasks = [
                asyncio.create_task(one(client, url, index, first_token))
                for index in range(NUM_REQUESTS)
            ]
            if kill:
                await first_token.wait()
                await asyncio.sleep(0.3)  # well inside the streams
                await asyncio.to_thread(kill_replicas_until_a_failover)
            return await asyncio.gather(*tasks)

    return asyncio.run(run())


def test_killing_a_replica_mid_stream_loses_no_request_and_changes_no_token(live_app, chaos_url):

    fault_free = run_load(chaos_url, live_app.headers(), kill=False)
    assert num_failovers() == 0
    with_kill = run_load(chaos_url, live_app.headers(), kill=True)
    assert with_kill == fault_free  # same text (greedy and seeded), same usage
    assert all(usage["completion_tokens"] == MAX_TOKENS for _, usage in with_kill)
    print(f"failovers: {num_failovers()}")
    assert num_failovers() >= 1


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
