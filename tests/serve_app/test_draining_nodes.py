"""DrainingNodes: the GCS is asked at most once per refresh period, off the event loop; a
failed ask keeps the last view; outside Ray no node drains."""

from __future__ import annotations

import asyncio
import threading

from serve_app.draining_nodes import DrainingNodes, query_gcs


def test_the_view_is_refreshed_in_the_background_once_per_period():
    answers = iter([{"n1": 10.0}, {"n1": 10.0, "n2": 0.0}, RuntimeError("GCS down")])
    threads: list[str] = []
    now = [0.0]

    def query() -> dict[str, float]:
        threads.append(threading.current_thread().name)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run():
        nodes = DrainingNodes(refresh_s=1.0, query=query, clock=lambda: now[0])
        assert nodes.deadlines() == {}  # the first ask is under way; nothing known yet
        assert await nodes.refreshed() == {"n1": 10.0}
        now[0] = 0.5
        assert nodes.deadlines() == {"n1": 10.0} and len(threads) == 1  # one ask so far
        now[0] = 2.0
        nodes.deadlines()
        await asyncio.sleep(0.05)
        assert nodes.deadlines() == {"n1": 10.0, "n2": 0.0}
        assert await nodes.refreshed() == {"n1": 10.0, "n2": 0.0}  # the failure keeps it

    asyncio.run(run())
    assert len(threads) == 3
    assert threading.main_thread().name not in threads


def test_outside_ray_no_node_is_draining():
    assert query_gcs() == {}
