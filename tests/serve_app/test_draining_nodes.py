"""DrainingNodes: the GCS is asked at most once per refresh period, off the event loop; a
failed ask keeps the last view; outside Ray no node drains; the private Ray API it reads is
checked at start (a Ray without it is named in one logged line) and its answer's shape."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import ray
from ray._private.state import GlobalState

from serve_app.draining_nodes import (
    DrainingNodes,
    deadlines_from,
    drain_api_present,
    drain_api_problem,
    query_gcs,
)


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


@pytest.fixture
def fresh_check():
    drain_api_present.cache_clear()
    yield
    drain_api_present.cache_clear()


def test_the_installed_ray_has_the_drain_api():
    assert drain_api_problem() is None


def test_a_ray_without_the_drain_api_is_named_in_one_line_at_start(
    monkeypatch, caplog, fresh_check
):
    monkeypatch.delattr(GlobalState, "get_draining_nodes")
    with caplog.at_level(logging.WARNING, logger="serve_app.draining_nodes"):
        DrainingNodes()
        DrainingNodes()  # said once per process
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and message == drain_api_problem()
    assert f"Ray {ray.__version__} has no ray._private.state.state.get_draining_nodes()" in message


def test_a_drain_api_of_another_signature_is_named(monkeypatch, fresh_check):
    monkeypatch.setattr(GlobalState, "get_draining_nodes", lambda self, node_ids: {})
    problem = drain_api_problem()
    assert problem is not None and ray.__version__ in problem and "(node_ids)" in problem
    assert not drain_api_present()


def test_an_answer_of_another_shape_is_an_error_naming_ray_and_the_api():
    assert deadlines_from({"n1": 30_000, "n2": 0}) == {"n1": 30.0, "n2": 0.0}
    with pytest.raises(TypeError, match=f"Ray {ray.__version__}'s .*get_draining_nodes"):
        deadlines_from([("n1", 30_000)])
