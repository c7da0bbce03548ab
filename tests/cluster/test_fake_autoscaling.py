"""The app on Ray's fake multi-node autoscaler (cluster/local-fake.yaml +
deployments/local-fake.yaml): load raises model replicas and the new replica's pending
demand makes the autoscaler add a spot node; a spot preemption (drain, then the node dies)
is covered by an on-demand burst node; idle time removes the replica above the floor and
then its node. The on-demand floor replica serves throughout and no request fails.

It also times one cold start (scale-up decision to the new replica's first token), split
into its parts, and prints the table docs/deploy.md records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.cluster import cold_start
from tests.cluster.fake_cluster import FakeCluster
from tests.serve_app.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(600)]

DEPLOYMENT_YAML = Path(__file__).parents[2] / "deployments" / "local-fake.yaml"
LABEL = "serve-app/capacity"
REPLICA_ACTOR = "ServeReplica:llm:ModelReplica"
# Ray 2.60 itself no longer reads these (its replicas and handles push every
# autoscaling_config.metrics_interval_s); kept for the Ray versions that do.
SERVE_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}
# Short, so an emptied node goes within seconds. Safe for a node that was just launched
# and is still empty: autoscaler v2 never idle-terminates a node that pending demand (the
# replica it was launched for) is scheduled on, and the node's raylet refuses the drain
# once the replica holds its GPU.
NODE_IDLE_TIMEOUT_S = 2
POLL_S = 0.25  # how often wait_for looks: each phase ends within a quarter second of it


def app_args() -> dict:
    [application] = yaml.safe_load(DEPLOYMENT_YAML.read_text())["applications"]
    args = application["args"]
    # downscale_after_s: the idle phase waits it out; under load its clock never starts (a
    # queue throughout: 6 streams, 4 engine slots on 2 replicas).
    args["replica"]["autoscaling"].update(max_replicas=2, downscale_after_s=1)
    args["auth"] = {"api_keys_env": None}
    return args


class Load:
    """Streaming completions from a few threads until stopped; every outcome is kept."""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.base_url = base_url
        self.failures: list[str] = []
        self.completed = 0
        self.started_of_completed: list[float] = []  # time.time() each completed one began
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(concurrency)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=120) as client:
            while not self._stop.is_set():
                started = time.time()
                try:
                    complete(client, max_tokens=64)
                    self.completed += 1
                    self.started_of_completed.append(started)
                except Exception as error:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {error!r}")

    def served_since(self, moment: float) -> int:
        """Requests begun after `moment` (time.time()) that completed."""
        return sum(started > moment for started in list(self.started_of_completed))


def complete(client: httpx.Client, max_tokens: int) -> float:
    """One streamed completion; returns the seconds to its first token."""
    started = time.monotonic()
    first = None
    body = {"model": "tiny", "prompt": "hello " * 8, "max_tokens": max_tokens, "stream": True}
    body |= {"temperature": 0, "ignore_eos": True}
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {"):
                first = time.monotonic() - started
            if line == "data: [DONE]":
                return first if first is not None else float("nan")
    raise RuntimeError("stream ended without [DONE]")


def worker_nodes(ray) -> dict[str, str]:
    """Alive nodes with a capacity label: node id -> capacity class."""
    return {
        node["NodeID"]: node["Labels"][LABEL]
        for node in ray.nodes()
        if node["Alive"] and LABEL in node.get("Labels", {})
    }


def replica_nodes(ray) -> list[str]:
    """The capacity class of each live replica actor's node."""
    classes = worker_nodes(ray)
    return sorted(
        classes.get(actor["Address"]["NodeID"], "head")
        for actor in ray._private.state.actors().values()
        if actor["ActorClassName"] == REPLICA_ACTOR and actor["State"] == "ALIVE"
    )


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications["llm"].deployments["ModelReplica"].replica_states
    return states.get("RUNNING", 0)


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, samples: list) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}; timeline: {samples[-10:]}")


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    try:
        cluster = FakeCluster.start(NODE_IDLE_TIMEOUT_S, SERVE_ENV)
    except RuntimeError:  # a port picked as free was taken meanwhile by another Ray
        cluster = FakeCluster.start(NODE_IDLE_TIMEOUT_S, SERVE_ENV)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_scale_up_preemption_and_idle_scale_down_keep_the_floor(fake_cluster, capsys):
    import ray
    from ray import serve

    from serve_app.app import build_app

    ray.init(address=fake_cluster.gcs_address, log_to_driver=False)
    timeline: list[tuple[float, int, list[str], list[str]]] = []
    sampling = threading.Event()
    began = time.time()

    def sample_forever() -> None:
        while not sampling.is_set():
            nodes = sorted(worker_nodes(ray).values())
            timeline.append((time.time() - began, running_replicas(), replica_nodes(ray), nodes))
            sampling.wait(1.0)  # not a sleep: the join below need not wait out the second

    try:
        port = free_port()
        # As deployments/local-fake.yaml: one proxy, on the head. (Fake nodes share one IP,
        # so a proxy per node would share the port and a dying node would take requests.)
        # Serve's controller and proxy start on the head while the floor node still boots.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        wait_for("the floor node", lambda: "on-demand-floor" in worker_nodes(ray).values(), 120, [])
        serve.run(build_app(app_args()), name="llm", route_prefix="/")
        assert replica_nodes(ray) == ["on-demand-floor"]
        sampler = threading.Thread(target=sample_forever, daemon=True)
        sampler.start()
        base_url = f"http://127.0.0.1:{port}"
        load_began = time.time()

        # 1. Load: the queue grows, a second replica is wanted, a spot node comes for it.
        with Load(base_url, concurrency=6) as load:
            spot_up = wait_for(
                "a spot node", lambda: "spot" in worker_nodes(ray).values(), 90, timeline
            )
            wait_for("2 running replicas", lambda: running_replicas() == 2, 120, timeline)
            assert replica_nodes(ray) == ["on-demand-floor", "spot"]

            # 2. Spot preemption while the spot market has nothing left: drain the spot node
            # (its notice), then kill it. The replacement cannot get spot, so burst
            # on-demand covers.
            [spot_id] = [node for node, kind in worker_nodes(ray).items() if kind == "spot"]
            fake_cluster.exhaust("gpu_spot")
            drain(ray, spot_id, deadline_s=60)
            wait_for(
                "an on-demand replica covering the spot one",
                lambda: (
                    replica_nodes(ray) == ["on-demand", "on-demand-floor"]
                    and running_replicas() == 2
                ),
                150,
                timeline,
            )
            # The cloud takes the node (often gone already: a drained raylet exits once its
            # last replica has stopped, and the autoscaler then terminates the instance).
            fake_cluster.kill_node(spot_id)
            gone = wait_for(
                "the spot node gone", lambda: spot_id not in worker_nodes(ray), 60, timeline
            )
            # Requests begun after the node left still complete (one per replica serving).
            wait_for("requests served after", lambda: load.served_since(gone) >= 2, 60, timeline)
        served_under_load = load.completed

        # 3. Idle: the replica above the floor goes first, then its node.
        wait_for("one replica", lambda: replica_nodes(ray) == ["on-demand-floor"], 90, timeline)
        wait_for(
            "the burst node removed",
            lambda: sorted(worker_nodes(ray).values()) == ["on-demand-floor"],
            90,
            timeline,
        )
        sampling.set()
        sampler.join(timeout=10)
        with httpx.Client(base_url=base_url, timeout=60) as client:
            idle_ttft_s = complete(client, max_tokens=1)

        assert load.failures == []
        assert served_under_load > 0
        # The floor replica ran from deployment to the end, whatever else came and went.
        assert all("on-demand-floor" in replicas for _, _, replicas, _ in timeline)
        logs = fake_cluster.temp_dir / "session_latest" / "logs"
        start = cold_start.measure(logs, "gpu_spot", spot_up, after=load_began)
        assert all(seconds > -1.0 for _, seconds in start.rows())  # log vs poll resolution
        with capsys.disabled():
            print("\ncold start of the spot replica (s):")
            for name, seconds in start.rows():
                print(f"  {name:<40} {seconds:6.1f}")
            print(f"  {'first token on an idle replica':<40} {idle_ttft_s:6.2f}")
            print(f"  {'total, decision -> first call':<40} {start.total_s():6.1f}")
            print("timeline (each change):")
            for previous, row in zip([None, *timeline], timeline, strict=False):
                if previous is None or previous[1:] != row[1:]:
                    print(f"  t={row[0]:6.1f}s running={row[1]} replicas={row[2]} nodes={row[3]}")
    finally:
        # No serve.shutdown(): it stops each replica gracefully, one after another (seconds
        # each), and the fixture kills every process of the cluster right after anyway.
        sampling.set()
        ray.shutdown()


def drain(ray, node_id: str, deadline_s: float) -> None:
    """What the preemption watcher does on a spot notice: drain with reason PREEMPTION."""
    from ray.core.generated import autoscaler_pb2

    accepted, why = ray._private.worker.global_worker.gcs_client.drain_node(
        node_id,
        autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION,
        "spot preemption notice (test)",
        int((time.time() + deadline_s) * 1000),
    )
    assert accepted, why
