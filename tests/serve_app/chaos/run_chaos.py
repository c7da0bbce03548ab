"""Spot chaos on a multi-node Ray cluster on this machine: prints one row per fault.

    .venv/bin/python -m tests.serve_app.chaos.run_chaos [--json FILE] [--scenarios ...]

A head node (on-demand: Serve's controller and proxy, the ingress and the batcher) and
three spot-labelled worker nodes (`ray.cluster_utils.Cluster`; one model replica per node,
two replicas, one spare node) serve `tiny` with `placement.enabled`. Steady load: CLIENTS
concurrent streaming clients, each sending the next request of a fixed pool as soon as its
previous one ends, greedy and seeded sampling alternating. The pool's fault-free answers
(a first pass) are the reference. Then each fault in turn, under that load:

- kill_replica: SIGKILL one model replica's process (Serve restarts it);
- node_lost: a worker node with a replica vanishes, no notice;
- drain_10s: the GCS drains a replica's node with reason PREEMPTION and a 10 s deadline
  (what `ray drain-node` does); Ray takes the node down once it is idle or at the deadline;
- aws_notice / gcp_notice: the preemption watcher (serve_app/preemption) on a replica's
  node is fed a spot notice by a fake metadata server on loopback (AWS: instance-action
  15 s ahead; GCP: `preempted` TRUE, 15 s notice) and drains the node; the node goes at
  the notice's end.

After each fault a fresh worker node joins, and the next fault waits until two replicas
run. Each row: requests sent, failed requests, greedy and seeded answers identical to the
reference (text byte for byte, usage counts), and the batcher's failovers by reason.
The test (test_spot_chaos.py) runs this and checks every row.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

# Every node here is on loopback, and Ray swaps 127.0.0.1 in an address for the machine's
# IP, where nothing listens, unless told this host is the whole cluster (read at import).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx

from tests.serve_app.conftest import free_port
from tests.serve_app.preemption.fake_metadata_server import FakeMetadataServer

SCENARIOS = ("kill_replica", "node_lost", "drain_10s", "aws_notice", "gcp_notice")
APP = "chaos"
CLIENTS = 12
POOL = 48  # distinct requests; the load cycles through them
MAX_TOKENS = 64
# Every LONG_EVERY-th request is long, so that each fault, a drain too, finds requests
# mid-stream on the replica it hits (short ones end within a second here).
LONG_MAX_TOKENS = 512
LONG_EVERY = 4
LOAD_BEFORE_FAULT_S = 3.0  # steady load before each fault
LOAD_AFTER_FAULT_S = 3.0  # and after it has played out, on the survivors
DRAIN_DEADLINE_S = 10.0
NOTICE_S = 15.0  # spot notices fed to the watcher (AWS gives 120 s, GCP 30 s)
WATCHER_MARGIN_S = 5.0  # the watcher's drain deadline: this long before the notice's end
SPOT_LABEL = {"serve-app/capacity": "spot"}
REPLICA_DEPLOYMENT = "ModelReplica"
REPLICAS = 2


def app_args() -> dict:
    return {
        "model": "tiny",
        "engine": {"max_num_seqs": 8, "kv_cache_memory_bytes": 16 * 2**20},
        "replica": {
            "num_replicas": REPLICAS,
            "num_cpus": 1,  # one per spot node
            "health_check_period_s": 2,
            # Hand requests back as soon as the drain is seen (every drain here has a 10 s
            # deadline), so each drain row resumes requests caught mid-stream; the default
            # (5 s before the deadline) first lets short requests finish where they are.
            "drain_handback_s": DRAIN_DEADLINE_S,
        },
        "ingress": {"num_cpus": 0.1},
        "batcher": {"num_cpus": 0.1},
        "placement": {"enabled": True, "on_demand_floor": 0},
        "auth": {"api_keys_env": None},
    }


def body(index: int) -> dict:
    seeded = {"temperature": 1.0, "top_p": 0.95, "seed": 1000 + index} if index % 2 else {}
    return {
        "model": "tiny",
        "prompt": f"Spot story {index}:",
        "max_tokens": LONG_MAX_TOKENS if index % LONG_EVERY == LONG_EVERY - 1 else MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        **seeded,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@dataclass
class Answer:
    index: int
    text: str = ""
    usage: dict | None = None
    error: str = ""


@dataclass
class Row:
    scenario: str
    requests: int
    failed: int
    greedy_identical: int
    greedy: int
    seeded_identical: int
    seeded: int
    usage_identical: int
    failovers: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


async def ask(client: httpx.AsyncClient, url: str, index: int) -> Answer:
    answer = Answer(index)
    try:
        async with client.stream("POST", url, json=body(index % POOL)) as response:
            if response.status_code != 200:
                answer.error = f"HTTP {response.status_code}: {(await response.aread())[:200]}"
                return answer
            events = [line[6:] async for line in response.aiter_lines() if line[:6] == "data: "]
    except httpx.HTTPError as error:
        answer.error = repr(error)
        return answer
    if not events or events[-1] != "[DONE]":
        answer.error = f"stream cut: {events[-2:]}"
        return answer
    chunks = [json.loads(event) for event in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        answer.error = next(str(chunk["error"]) for chunk in chunks if "error" in chunk)
        return answer
    answer.text = "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))
    answer.usage = chunks[-1].get("usage")
    return answer


async def steady_load(url: str, stop: threading.Event) -> list[Answer]:
    """CLIENTS closed-loop clients until `stop`; every request they started is awaited."""
    answers: list[Answer] = []
    counter = itertools.count()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            answers.append(await ask(client, url, next(counter)))

    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))
    return answers


async def reference(url: str) -> dict[int, Answer]:
    """The pool's answers without faults."""
    semaphore = asyncio.Semaphore(CLIENTS)

    async def one(client, index):
        async with semaphore:
            return await ask(client, url, index)

    async with httpx.AsyncClient(timeout=120) as client:
        answers = await asyncio.gather(*(one(client, index) for index in range(POOL)))
    failed = [a for a in answers if a.error]
    if failed:
        raise RuntimeError(f"the fault-free pass failed: {failed[:3]}")
    return {answer.index: answer for answer in answers}


class ChaosCluster:
    """The Ray cluster, the Serve app on it, and the faults."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        head = {
            "num_cpus": 2,
            "resources": {"on_demand_cpu": 1},  # placement's frontend resource
            "node_ip_address": "127.0.0.1",
            "object_store_memory": 100 * 2**20,
            "include_dashboard": False,
            "gcs_server_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
            # A vanished node is declared dead after ~3 s instead of ~15 s.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(REPLICAS + 1):
            self.add_spot_node()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}/v1/completions"

    def add_spot_node(self):
        return self.cluster.add_node(
            num_cpus=1,
            labels=dict(SPOT_LABEL),
            node_ip_address="127.0.0.1",
            object_store_memory=80 * 2**20,
        )

    def serve(self) -> None:
        import ray
        from ray import serve

        from serve_app.app import build_app

        ray.init(address=self.cluster.address, log_to_driver=False)
        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.http_port}
        )
        serve.run(build_app(app_args()), name=APP, route_prefix="/")

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()

    # ---- what runs where ------------------------------------------------------------------
    def replica_actors(self) -> list[dict]:
        from ray._private import state

        return [
            actor
            for actor in state.actors().values()
            if actor["State"] == "ALIVE" and f"{APP}#{REPLICA_DEPLOYMENT}" in (actor["Name"] or "")
        ]

    def node_of_a_replica(self):
        node_ids = {actor["Address"]["NodeID"] for actor in self.replica_actors()}
        return next(node for node in self.cluster.worker_nodes if node.node_id in node_ids)

    def node_alive(self, node) -> bool:
        import ray

        return any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes())

    def failovers(self) -> Counter[str]:
        from ray import serve

        from serve_app.app import BATCHER_NAME

        batcher = serve.get_deployment_handle(BATCHER_NAME, app_name=APP)
        return Counter(batcher.stats.remote().result(timeout_s=30)["failover_reasons"])

    def wait_for_replicas(self, timeout_s: float = 120) -> None:
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while True:
            deployment = serve.status().applications[APP].deployments[REPLICA_DEPLOYMENT]
            states = deployment.replica_states
            if states.get("RUNNING", 0) == REPLICAS and len(states) == 1:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas did not recover: {states}")
            time.sleep(0.5)

    def remove(self, node) -> None:
        if node in self.cluster.worker_nodes:
            self.cluster.remove_node(node, allow_graceful=False)

    def wait_gone_or_remove(self, node, at_s: float) -> None:
        """The node leaves by itself (a drained node once idle) or is taken at `at_s` (Unix)."""
        while self.node_alive(node) and time.time() < at_s:
            time.sleep(0.2)
        self.remove(node)

    # ---- the faults (each returns once it has played out) -----------------------------------
    def kill_replica(self) -> None:
        os.kill(self.replica_actors()[0]["Pid"], signal.SIGKILL)

    def node_lost(self) -> None:
        self.remove(self.node_of_a_replica())
        self.add_spot_node()

    def drain_10s(self) -> None:
        from serve_app.preemption.drain import RayNodeDrainer

        node = self.node_of_a_replica()
        deadline = time.time() + DRAIN_DEADLINE_S
        result = RayNodeDrainer(self.cluster.address, node.node_id).drain(deadline, "chaos drain")
        assert result.accepted, result.rejection_message
        self.wait_gone_or_remove(node, deadline)
        self.add_spot_node()

    def aws_notice(self) -> None:
        self._watched_notice("aws")

    def gcp_notice(self) -> None:
        self._watched_notice("gcp")

    def _watched_notice(self, provider: str) -> None:
        node = self.node_of_a_replica()
        with FakeMetadataServer() as metadata:
            command = [
                sys.executable,
                "-m",
                "serve_app.preemption",
                f"--provider={provider}",
                f"--metadata-url={metadata.url}",
                f"--ray-address={self.cluster.address}",
                f"--node-id={node.node_id}",
                "--poll-interval-s=0.2",
                f"--safety-margin-s={WATCHER_MARGIN_S}",
                f"--notice-s={NOTICE_S}",
                "--metrics-port=0",
            ]
            watcher = subprocess.Popen(command, stderr=subprocess.DEVNULL)
            try:
                time.sleep(2.0)  # started and polling
                ends_at = time.time() + NOTICE_S
                if provider == "aws":
                    stamp = datetime.fromtimestamp(ends_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    metadata.state.aws_notice = {"action": "terminate", "time": stamp}
                else:
                    metadata.state.gcp_preempted = True
                self.wait_gone_or_remove(node, ends_at)
            finally:
                watcher.terminate()
                watcher.wait(timeout=30)
        self.add_spot_node()


def run_scenario(chaos: ChaosCluster, name: str, expected: dict[int, Answer]) -> Row:
    """The load runs on its own thread and event loop: Ray's Cluster changes nodes only from
    the main thread."""
    started = time.monotonic()
    before = chaos.failovers()
    stop = threading.Event()
    answers: list[Answer] = []
    load = threading.Thread(
        target=lambda: answers.extend(asyncio.run(steady_load(chaos.url, stop)))
    )
    load.start()
    time.sleep(LOAD_BEFORE_FAULT_S)
    getattr(chaos, name)()
    time.sleep(LOAD_AFTER_FAULT_S)
    stop.set()
    load.join()
    row = compare(name, answers, expected, chaos.failovers() - before)
    row.seconds = round(time.monotonic() - started, 1)
    chaos.wait_for_replicas()
    return row


def compare(name: str, answers: list[Answer], expected: dict[int, Answer], failovers) -> Row:
    failed = [a for a in answers if a.error]
    served = [a for a in answers if not a.error]
    greedy = [a for a in served if (a.index % POOL) % 2 == 0]
    seeded = [a for a in served if (a.index % POOL) % 2 == 1]

    def same_text(a: Answer) -> bool:
        return a.text == expected[a.index % POOL].text

    return Row(
        scenario=name,
        requests=len(answers),
        failed=len(failed),
        greedy_identical=sum(map(same_text, greedy)),
        greedy=len(greedy),
        seeded_identical=sum(map(same_text, seeded)),
        seeded=len(seeded),
        usage_identical=sum(a.usage == expected[a.index % POOL].usage for a in served),
        failovers=dict(failovers),
        errors=[f"#{a.index}: {a.error}" for a in failed][:5],
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| fault | requests | failed | greedy identical | seeded identical | usage identical "
        "| failovers (replica died / node drained) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        died = row.failovers.get("replica_died", 0)
        drained = row.failovers.get("node_drained", 0)
        lines.append(
            f"| {row.scenario} | {row.requests} | {row.failed} "
            f"| {row.greedy_identical}/{row.greedy} | {row.seeded_identical}/{row.seeded} "
            f"| {row.usage_identical}/{row.requests - row.failed} | {died} / {drained} "
            f"| {row.seconds} |"
        )
    return "\n".join(lines)


def run(scenarios: list[str]) -> list[Row]:
    chaos = ChaosCluster()
    try:
        chaos.serve()
        chaos.wait_for_replicas()
        expected = asyncio.run(reference(chaos.url))
        rows = []
        for name in scenarios:
            rows.append(run_scenario(chaos, name, expected))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        return rows
    except BaseException:
        traceback.print_exc()  # before Ray shuts down: its exit can swallow the traceback
        raise
    finally:
        chaos.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    args = parser.parse_args()
    started = time.monotonic()
    rows = run(args.scenarios)
    print(f"\n{CLIENTS} clients, {POOL} requests in the pool, {MAX_TOKENS} tokens each ")
    print(f"(every {LONG_EVERY}th: {LONG_MAX_TOKENS}), ")
    print(f"{time.monotonic() - started:.0f} s in all\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([asdict(row) for row in rows], out, indent=1)


if __name__ == "__main__":
    main()
