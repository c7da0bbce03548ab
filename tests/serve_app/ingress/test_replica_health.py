"""ReplicaHealth: the cache /health and admission read. Every running replica is probed at
once; a zombie (silent) or failing replica does not hide a healthy one, is not asked again
while its probe is unanswered, and counts again once it answers; no replica healthy, none
running, nothing known yet or a stale cache each read as a problem in words."""

from __future__ import annotations

import asyncio

from serve_app.ingress.replica_health import ReplicaHealth

TIMEOUT_S = 0.05


class Replica:
    """A replica's health check as the cache sees it: answers, raises, or stays silent."""

    def __init__(self, state: str = "ok") -> None:
        self.state = state
        self.num_probes = 0
        self.wake = asyncio.Event()

    async def check_health(self) -> None:
        self.num_probes += 1
        while self.state == "silent":
            await self.wake.wait()
            self.wake.clear()
        if self.state == "failing":
            raise RuntimeError("engine loop stalled at step 1234 (internal detail)")

    def set(self, state: str) -> None:
        self.state = state
        self.wake.set()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def running(replicas: dict[str, Replica]):
    """What ServeReplicas gives: the running replicas, each with its probe."""

    async def probes() -> dict:
        return {name: replica.check_health for name, replica in replicas.items()}

    return probes


def cache(replicas: dict[str, Replica], clock: Clock | None = None) -> ReplicaHealth:
    return ReplicaHealth(
        running(replicas), period_s=1.0, timeout_s=TIMEOUT_S, clock=clock or Clock()
    )


def test_one_zombie_leaves_the_app_healthy_and_is_not_asked_again_until_it_answers():
    async def run() -> None:
        replicas = {"a": Replica(), "zombie": Replica("silent")}
        health = cache(replicas)
        assert health.problem() == "the model replicas' health is not known yet"
        snapshot = await health.poll()
        assert (snapshot.num_running, snapshot.num_healthy, snapshot.num_silent) == (2, 1, 1)
        assert health.problem() is None and health.num_healthy() == 1
        await health.poll()
        assert replicas["zombie"].num_probes == 1  # its first probe is still out
        assert replicas["a"].num_probes == 2
        replicas["zombie"].set("ok")  # it answers (SIGCONT)
        assert (await health.poll()).num_healthy == 2
        await health.poll()
        assert replicas["zombie"].num_probes == 2  # asked again once it had answered

    asyncio.run(run())


def test_no_healthy_replica_is_a_problem_that_names_the_state_but_no_exception_text():
    async def run() -> None:
        replicas = {"a": Replica("silent"), "b": Replica("failing"), "c": Replica("silent")}
        health = cache(replicas)
        await health.poll()
        assert health.num_healthy() == 0
        assert health.problem() == (
            "0 of 3 model replicas healthy, 2 not answering their health check,"
            " 1 failing their health check"
        )
        replicas.clear()  # Serve stopped them all: their probes are dropped
        await health.poll()
        assert health.problem() == "no model replica is running"

    asyncio.run(run())


def test_a_stale_cache_is_a_problem_and_counts_no_replica():
    async def run() -> None:
        clock = Clock()
        health = cache({"a": Replica()}, clock)
        await health.poll()
        assert health.problem() is None
        clock.now += health.max_age_s + 1  # the poll stopped (it never should)
        assert health.num_healthy() == 0
        assert health.problem() == (
            f"the model replicas' health was last known {health.max_age_s + 1:.0f} s ago"
        )

    asyncio.run(run())


def test_the_background_poll_follows_replicas_without_a_call_from_the_reader():
    async def run() -> None:
        replicas = {"a": Replica()}
        health = ReplicaHealth(running(replicas), period_s=0.01, timeout_s=TIMEOUT_S)
        health.start()
        await until(lambda: health.num_healthy() == 1)
        replicas["a"].set("silent")
        replicas["b"] = Replica("failing")
        await until(lambda: health.problem() is not None)
        assert health.problem() == (
            "0 of 2 model replicas healthy, 1 not answering their health check,"
            " 1 failing their health check"
        )
        replicas["a"].set("ok")
        await until(lambda: health.problem() is None)
        health.stop()

    asyncio.run(run())


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)
