"""DrainHandback with a scripted GCS view and clock: requests are handed back
`drain_handback_s` before the node's deadline, at once when that moment has passed, and
never for another node's drain or a drain without a deadline; the hand-back follows a
drain re-issued with a new deadline, and ends (new batches taken) when the drain does."""

from __future__ import annotations

import asyncio

from serve_app.draining_nodes import DrainingNodes
from serve_app.messages import ReplicaDrainingError
from serve_app.replica.drain import DrainHandback

NODE = "aa" * 28


class Scripted:
    """The GCS's draining table and a clock, both set by the test."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.table: dict[str, float] = {}

    def clock(self) -> float:
        return self.now


def watch(scripted: Scripted, steps: list, handback_s: float = 5.0, resumed=None) -> list:
    """Run the watch; `steps` are (table, now) pairs applied once per poll. The hand-backs,
    as (now, error); the resumes' times go to `resumed`."""
    handed: list[tuple[float, BaseException]] = []
    draining = DrainingNodes(refresh_s=0, query=lambda: dict(scripted.table))
    resumed = [] if resumed is None else resumed
    handback = DrainHandback(
        NODE,
        handback_s,
        lambda error: handed.append((scripted.now, error)),
        lambda: resumed.append(scripted.now),
        draining=draining,
        clock=scripted.clock,
        poll_s=0.001,
    )

    async def run():
        task = asyncio.create_task(handback.watch())
        for table, now in steps:
            scripted.table, scripted.now = table, now
            await asyncio.sleep(0.02)  # a few polls
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    return handed


def test_requests_are_handed_back_handback_s_before_the_deadline():
    scripted = Scripted()
    steps = [({}, 1000.0), ({NODE: 1030.0}, 1001.0), ({NODE: 1030.0}, 1024.9)]
    steps += [({NODE: 1030.0}, 1025.0), ({NODE: 1030.0}, 1026.0)]
    handed = watch(scripted, steps)
    assert len(handed) == 1
    when, error = handed[0]
    assert when == 1025.0 and isinstance(error, ReplicaDrainingError) and NODE in str(error)


def test_a_deadline_closer_than_handback_s_hands_back_at_once():
    scripted = Scripted()
    handed = watch(scripted, [({NODE: 1002.0}, 1000.0)])
    assert [when for when, _ in handed] == [1000.0]


def test_another_nodes_drain_or_a_drain_without_deadline_hands_nothing_back():
    scripted = Scripted()
    steps = [({"bb" * 28: 1001.0}, 1000.0), ({NODE: 0.0}, 1000.0), ({NODE: 0.0}, 5000.0)]
    assert watch(scripted, steps) == []


def test_a_drain_reissued_with_an_earlier_deadline_hands_back_before_the_new_one():
    scripted = Scripted()
    steps = [({NODE: 1100.0}, 1000.0), ({NODE: 1030.0}, 1001.0), ({NODE: 1030.0}, 1024.9)]
    steps += [({NODE: 1030.0}, 1025.0), ({NODE: 1030.0}, 1026.0)]
    assert [when for when, _ in watch(scripted, steps)] == [1025.0]


def test_a_drain_reissued_with_a_later_deadline_hands_back_before_the_new_one():
    scripted = Scripted()
    steps = [({NODE: 1030.0}, 1000.0), ({NODE: 1100.0}, 1001.0), ({NODE: 1100.0}, 1026.0)]
    steps += [({NODE: 1100.0}, 1095.0)]
    assert [when for when, _ in watch(scripted, steps)] == [1095.0]


def test_a_cancelled_drain_takes_new_batches_again_and_a_new_drain_hands_back_again():
    scripted = Scripted()
    resumed: list[float] = []
    steps = [({NODE: 1002.0}, 1000.0), ({}, 1001.0), ({}, 1003.0), ({NODE: 1010.0}, 1006.0)]
    handed = watch(scripted, steps, resumed=resumed)
    assert [when for when, _ in handed] == [1000.0, 1006.0]
    assert resumed == [1001.0]


def test_a_deadline_moved_past_the_handback_moment_takes_new_batches_again():
    scripted = Scripted()
    resumed: list[float] = []
    steps = [({NODE: 1002.0}, 1000.0), ({NODE: 1100.0}, 1001.0), ({NODE: 1100.0}, 1095.0)]
    handed = watch(scripted, steps, resumed=resumed)
    assert [when for when, _ in handed] == [1000.0, 1095.0]
    assert resumed == [1001.0]
