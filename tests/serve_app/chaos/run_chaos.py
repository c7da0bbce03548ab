"""Spot chaos on a multi-node Ray cluster on this machine: prints one row per fault.

    .venv/bin/python -m tests.serve_app.chaos.run_chaos [--json FILE] [--scenarios ...]

A head node (on-demand: Serve's controller and proxy, the ingress and the batcher) and
three spot-labelled worker nodes (`ray.cluster_utils.Cluster`; one model replica per node,
two replicas, one spare node) serve `tiny` with `placement.enabled`. Steady load: CLIENTS
concurrent streaming clients, each sending the next request of a fixed pool as soon as its
previous one ends, greedy and seeded sampling alternating. The pool's fault-free answers
(a first pass) are the reference. Then each fault in turn, under that load, once a replica
holds MID_STREAM long requests mid-stream (a token out, far from their end; the batcher's
`stats()` names the replica serving each batch): that replica, or its node, is the victim.

- kill_replica: SIGKILL the replica's process (Serve restarts it);
- node_lost: its node vanishes, no notice;
- drain_5s: the GCS drains its node with reason PREEMPTION and a DRAIN_DEADLINE_S
  deadline (what `ray drain-node` does); Ray takes the node down once it is idle, or the
  cloud at the deadline;
- aws_notice / gcp_notice: the preemption watcher (serve_app/preemption) on its node is
  fed a spot notice by a fake metadata server on loopback (AWS: instance-action NOTICE_S
  ahead; GCP: `preempted` TRUE, a NOTICE_S notice) and drains the node; the node goes at
  the notice's end. Every replica's node runs a watcher; only the victim's gets a notice.

The load goes on until the fault has played out and CLIENTS more requests were sent. A
fresh worker node replaces each node lost (started while the load's last requests finish),
and the next fault waits until two replicas run. Each row: requests sent, failed requests,
greedy and seeded answers identical to the reference (text byte for byte, usage counts),
the batcher's failovers by reason, and how many long requests were mid-stream on the
victim when it was hit. The test (test_spot_chaos.py) runs this and checks every row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

# Every node here is on loopback, and Ray swaps 127.0.0.1 in an address for the machine's
# IP, where nothing listens, unless told this host is the whole cluster (read at import).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import httpx

from serve_app.preemption.notices import AWS_NOTICE_PATH, GCP_NOTICE_PATH
from tests.serve_app.chaos.scenarios import CLIENTS, MID_STREAM, REASONS, SCENARIOS
from tests.serve_app.conftest import free_port
from tests.serve_app.preemption.fake_metadata_server import FakeMetadataServer

NODE_FAULTS = {"node_lost", "drain_5s", "aws_notice", "gcp_notice"}  # a fresh node replaces it
NOTICE_PROVIDERS = {"aws_notice": "aws", "gcp_notice": "gcp"}
NOTICE_PATHS = {"aws": AWS_NOTICE_PATH, "gcp": GCP_NOTICE_PATH}
APP = "chaos"
POOL = 32  # distinct requests, more than a row sends; the load cycles through them
MAX_TOKENS = 64
# Every LONG_EVERY-th request is long: those are what a fault waits for on its victim
# (short ones end within a second or two here, a long one takes several).
LONG_MAX_TOKENS = 192
LONG_EVERY = 4
# A fault waits until its victim holds MID_STREAM long requests that each have a token out
# and at least MIN_TOKENS_LEFT to go: seconds of work here (15-55 tokens/s per request),
# well over what the slowest fault takes to reach them (a notice's drain is seen by the
# replica within ~1.5 s), so every row counts at least MID_STREAM failovers. The first
# CLIENTS requests of a row hold CLIENTS / LONG_EVERY = 3 long ones, sent at once, so one
# of the two replicas soon holds two fresh ones; later long ones are further chances.
MIN_TOKENS_LEFT = LONG_MAX_TOKENS - 32
APP_START_TIMEOUT_S = 180.0  # for the app to run on the fresh cluster
VICTIM_TIMEOUT_S = 60.0  # for a victim, with a clear error after it
PLAYED_OUT_TIMEOUT_S = 60.0  # for the victim's requests to fail over
WATCHER_START_TIMEOUT_S = 60.0  # for every watcher's first poll (it imports Ray: seconds)
LOAD_TIMEOUT_S = 60.0  # for the load's requests after the fault
# Short deadlines: the hand-back comes within ~1.5 s of the drain, and Serve stops a
# draining replica at once when the deadline is inside its graceful shutdown timeout.
DRAIN_DEADLINE_S = 5.0
NOTICE_S = 7.0  # spot notices fed to the watcher (AWS gives 120 s, GCP 30 s)
WATCHER_MARGIN_S = 2.0  # the watcher's drain deadline: this long before the notice's end
SPOT_LABEL = {"serve-app/capacity": "spot"}
REPLICA_DEPLOYMENT = "ModelReplica"
REPLICAS = 2
POLL_S = 0.2  # every wait polls (each poll costs CPU this 2-core box's cluster lacks)
STARTED = time.monotonic()

T = TypeVar("T")


def log(message: str) -> None:
    """Progress on stderr, timed from the start: where a slow or failed run spent its time."""
    print(f"[chaos {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait_until(check: Callable[[], T], timeout_s: float, what: Callable[[], str]) -> T:
    """Poll `check` until it returns something truthy; TimeoutError saying `what()` if not."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what()} (after {timeout_s:.0f} s)")
        time.sleep(POLL_S)
    return result


def app_args() -> dict:
    return {
        "model": "tiny",
        "engine": {"max_num_seqs": 8, "kv_cache_memory_bytes": 16 * 2**20},
        "replica": {
            "num_replicas": REPLICAS,
            "num_cpus": 1,  # one per spot node
            "health_check_period_s": 2,
            # Hand requests back as soon as the drain is seen (no drain here has a longer
            # deadline), so each drain row resumes requests caught mid-stream; the default
            # (5 s before the deadline) first lets short requests finish where they are.
            "drain_handback_s": max(DRAIN_DEADLINE_S, NOTICE_S - WATCHER_MARGIN_S),
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
    victim_mid_stream: int = 0  # long requests mid-stream on the victim when it was hit


@dataclass(frozen=True)
class Replica:
    """A model replica actor, as the fault needs it."""

    actor_id: str
    node_id: str
    pid: int


@dataclass(frozen=True)
class NodeEnd:
    """A node a fault is taking down: it leaves once idle, or is removed at `at_s`."""

    node: Any  # ray._private.node.Node
    at_s: float  # Unix seconds (the drain's deadline, the notice's end)


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


class SteadyLoad:
    """CLIENTS closed-loop clients, from `start` until `stop`; `join` awaits every request
    they started. On its own thread and event loop: Ray's Cluster changes nodes only from
    the main thread, which runs the faults meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[Answer] = []
        self.sent = 0  # requests started so far (read from the main thread)
        self.error: BaseException | None = None  # what ended the load early, if anything
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # re-raised by `join`, on the main thread
            self.error = error

    async def _run(self) -> None:
        async def client_loop(client: httpx.AsyncClient) -> None:
            while not self._stop.is_set():
                index, self.sent = self.sent, self.sent + 1
                self.answers.append(await ask(client, self.url, index))

        async with httpx.AsyncClient(timeout=120) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(CLIENTS)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No new request from now on; those in flight go on."""
        self._stop.set()

    def join(self) -> list[Answer]:
        self.stop()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError("the load failed") from self.error
        return self.answers


async def reference(url: str) -> dict[int, Answer]:
    """The pool's answers without faults: long requests first and as many at once as the
    replicas run (engine.max_num_seqs each), so the long ones do not end the pass alone."""
    semaphore = asyncio.Semaphore(REPLICAS * app_args()["engine"]["max_num_seqs"])
    order = sorted(range(POOL), key=lambda index: body(index)["max_tokens"], reverse=True)

    async def one(client, index):
        async with semaphore:
            return await ask(client, url, index)

    async with httpx.AsyncClient(timeout=120) as client:
        answers = await asyncio.gather(*(one(client, index) for index in order))
    failed = [a for a in answers if a.error]
    if failed:
        raise RuntimeError(f"the fault-free pass failed: {failed[:3]}")
    return {answer.index: answer for answer in answers}


@contextlib.contextmanager
def watcher_process(
    provider: str, metadata_url: str, ray_address: str, node_id: str
) -> Iterator[subprocess.Popen]:
    """`python -m serve_app.preemption` for one node, as a spot node runs it."""
    command = [
        sys.executable,
        "-m",
        "serve_app.preemption",
        f"--provider={provider}",
        f"--metadata-url={metadata_url}",
        f"--ray-address={ray_address}",
        f"--node-id={node_id}",
        "--poll-interval-s=0.2",
        f"--safety-margin-s={WATCHER_MARGIN_S}",
        f"--notice-s={NOTICE_S}",
        "--metrics-port=0",
    ]
    watcher = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        yield watcher
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)


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
            "include_log_monitor": False,  # it only feeds drivers' logs: log_to_driver is off
            "gcs_server_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
            # A vanished node is declared dead after ~3 s instead of ~15 s.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        }
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}/v1/completions"
        self.metadata: dict[str, FakeMetadataServer] = {}  # by node id, while watchers run
        self.notice_path = ""  # what they poll

    def add_spot_node(self):
        """A fresh spot node, not waited for (Ray starts its processes within seconds here):
        `wait_for_replicas` waits for it before the next fault."""
        return self.cluster.add_node(
            wait=False,
            num_cpus=1,
            labels=dict(SPOT_LABEL),
            node_ip_address="127.0.0.1",
            object_store_memory=80 * 2**20,
        )

    def serve(self) -> None:
        """The app deploys (on a thread: serve.run waits for it) while the spot nodes start,
        so Serve's controller, proxy, ingress and batcher come up on the head meanwhile."""
        import ray

        ray.init(address=self.cluster.address, log_to_driver=False)
        pool = ThreadPoolExecutor(max_workers=1)
        try:
            deployed = pool.submit(self._deploy)
            for _ in range(REPLICAS + 1):
                self.add_spot_node()
            deployed.result(timeout=APP_START_TIMEOUT_S)
        finally:
            pool.shutdown(wait=False)  # a deploy that failed to finish ends with Ray
        self.wait_for_replicas()

    def _deploy(self) -> None:
        from ray import serve

        from serve_app.app import build_app

        serve.start(
            proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": self.http_port}
        )
        serve.run(build_app(app_args()), name=APP, route_prefix="/")

    def shutdown(self) -> None:
        """Every node's processes killed; no graceful `serve.shutdown()` first (seconds of
        replicas draining, for nothing: the whole cluster goes)."""
        import ray

        try:
            ray.shutdown()
        finally:
            self.cluster.shutdown()

    # ---- what runs where ------------------------------------------------------------------
    def batcher(self):
        from ray import serve

        from serve_app.app import BATCHER_NAME

        return serve.get_deployment_handle(BATCHER_NAME, app_name=APP)

    def replica_actors(self, actors: list[dict] | None = None) -> list[dict]:
        """The live model replica actors (among `actors`, default: the GCS's actor table)."""
        from ray._private import state

        return [
            actor
            for actor in (state.actors().values() if actors is None else actors)
            if actor["State"] == "ALIVE" and f"{APP}#{REPLICA_DEPLOYMENT}" in (actor["Name"] or "")
        ]

    def replica_of_channel(self, channel: str) -> Replica | None:
        """The replica that owns an AbortChannel (it names the replica in the batcher's
        stats): the channel's owner address is the replica actor's worker address (the
        actor table has no worker id)."""
        from ray._private import state

        actors = list(state.actors().values())
        owner = next((a["OwnerAddress"] for a in actors if a["Name"] == channel), None)
        if owner is None:
            return None  # not registered yet, or gone
        return next(
            (
                Replica(actor["ActorID"], actor["Address"]["NodeID"], actor["Pid"])
                for actor in self.replica_actors(actors)
                if (actor["Address"]["NodeID"], actor["Address"]["Port"])
                == (owner["NodeID"], owner["Port"])
            ),
            None,
        )

    def mid_stream(self) -> Counter[str]:
        """Long requests mid-stream, far from their end, by their replica's AbortChannel."""
        batcher = self.batcher()
        live = batcher.live_requests.remote().result(timeout_s=30)
        servers = batcher.stats.remote().result(timeout_s=30)["batch_servers"]
        return Counter(
            servers[state.batch_id]
            for state in live.values()
            if state.batch_id in servers
            and state.output_ids
            and not state.finished
            and state.remaining_max_tokens() >= MIN_TOKENS_LEFT
        )

    def wait_for_victim(self) -> tuple[Replica, int]:
        """A replica holding MID_STREAM long requests mid-stream, and how many it holds."""
        seen: Counter[str] = Counter()

        def victim() -> tuple[Replica, int] | None:
            nonlocal seen
            seen = self.mid_stream()
            for channel, count in seen.most_common():
                replica = self.replica_of_channel(channel) if count >= MID_STREAM else None
                if replica is not None:
                    return replica, count
            return None

        return wait_until(
            victim,
            VICTIM_TIMEOUT_S,
            lambda: f"no replica held {MID_STREAM} long requests mid-stream: {dict(seen)}",
        )

    def node_of(self, replica: Replica):
        return next(node for node in self.cluster.worker_nodes if node.node_id == replica.node_id)

    def node_alive(self, node) -> bool:
        import ray

        return any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes())

    def failovers(self) -> Counter[str]:
        return Counter(self.batcher().stats.remote().result(timeout_s=30)["failover_reasons"])

    def wait_for_failovers(self, before: Counter[str], reason: str, count: int) -> None:
        """Until `count` requests have failed over for `reason` since `before`: the fault
        has reached the victim's requests."""
        now: Counter[str] = Counter()

        def reached() -> bool:
            nonlocal now
            now = self.failovers() - before
            return now[reason] >= count

        wait_until(
            reached,
            PLAYED_OUT_TIMEOUT_S,
            lambda: f"{count} {reason} failovers expected, the batcher counted {dict(now)}",
        )

    def wait_for_replicas(self, timeout_s: float = 120) -> None:
        """Every node up, and REPLICAS replicas running (the next fault needs a survivor)."""
        from ray import serve

        self.cluster.wait_for_nodes(timeout=timeout_s)
        states: dict[str, int] = {}

        def recovered() -> bool:
            nonlocal states
            deployment = serve.status().applications[APP].deployments[REPLICA_DEPLOYMENT]
            states = deployment.replica_states
            return states.get("RUNNING", 0) == REPLICAS and len(states) == 1

        wait_until(recovered, timeout_s, lambda: f"replicas did not recover: {states}")

    def remove(self, node) -> None:
        if node in self.cluster.worker_nodes:
            self.cluster.remove_node(node, allow_graceful=False)

    def wait_gone_or_remove(self, end: NodeEnd) -> None:
        """The node leaves by itself (a drained node once idle) or is taken at its end."""
        while self.node_alive(end.node) and time.time() < end.at_s:
            time.sleep(POLL_S)
        log("node " + ("removed at its end" if self.node_alive(end.node) else "left by itself"))
        self.remove(end.node)

    # ---- the notice watchers --------------------------------------------------------------
    @contextlib.contextmanager
    def watching(self, provider: str | None) -> Iterator[None]:
        """A preemption watcher on every replica's node (if `provider`), each reading its own
        fake metadata server: they start before the load, and the victim is known only
        under load."""
        if provider is None:
            yield
            return
        with contextlib.ExitStack() as stack:
            for node_id in {actor["Address"]["NodeID"] for actor in self.replica_actors()}:
                metadata = stack.enter_context(FakeMetadataServer())
                address = self.cluster.address
                stack.enter_context(watcher_process(provider, metadata.url, address, node_id))
                self.metadata[node_id] = metadata
            self.notice_path = NOTICE_PATHS[provider]
            try:
                yield
            finally:
                self.metadata.clear()

    def wait_for_watchers(self) -> None:
        """Until every watcher has polled its metadata server (at once if none runs): a
        notice is fed to a watcher that is reading."""
        wait_until(
            lambda: all(m.state.count("GET", self.notice_path) for m in self.metadata.values()),
            WATCHER_START_TIMEOUT_S,
            lambda: "a preemption watcher never polled its metadata server",
        )

    # ---- the faults (each returns the end of the node it takes, if that is still to come) ------
    def kill_replica(self, victim: Replica) -> None:
        os.kill(victim.pid, signal.SIGKILL)

    def node_lost(self, victim: Replica) -> None:
        self.remove(self.node_of(victim))

    def drain_5s(self, victim: Replica) -> NodeEnd:
        from serve_app.preemption.drain import RayNodeDrainer

        node = self.node_of(victim)
        deadline = time.time() + DRAIN_DEADLINE_S
        result = RayNodeDrainer(self.cluster.address, node.node_id).drain(deadline, "chaos drain")
        assert result.accepted, result.rejection_message
        return NodeEnd(node, deadline)

    def aws_notice(self, victim: Replica) -> NodeEnd:
        ends_at = time.time() + NOTICE_S
        stamp = datetime.fromtimestamp(ends_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.metadata[victim.node_id].state.aws_notice = {"action": "terminate", "time": stamp}
        return NodeEnd(self.node_of(victim), ends_at)

    def gcp_notice(self, victim: Replica) -> NodeEnd:
        ends_at = time.time() + NOTICE_S
        self.metadata[victim.node_id].state.gcp_preempted = True
        return NodeEnd(self.node_of(victim), ends_at)


def run_scenario(chaos: ChaosCluster, name: str, expected: dict[int, Answer]) -> Row:
    """One fault under the steady load: on a replica holding MID_STREAM long requests
    mid-stream; the load goes on until the fault has played out (its requests failed over,
    its node gone) and CLIENTS more requests were sent after it, to the survivors."""
    started = time.monotonic()
    before = chaos.failovers()
    load = SteadyLoad(chaos.url)
    with chaos.watching(NOTICE_PROVIDERS.get(name)):
        # Watchers first: the victim is then found among the load's first long requests.
        chaos.wait_for_watchers()
        load.start()
        try:
            victim, mid_stream = chaos.wait_for_victim()
            log(f"{name}: victim pid {victim.pid}, {mid_stream} long requests mid-stream")
            sent = load.sent
            node_end = getattr(chaos, name)(victim)
            chaos.wait_for_failovers(before, REASONS[name], mid_stream)
            log(f"{name}: their failovers counted")
            if node_end is not None:
                chaos.wait_gone_or_remove(node_end)
            wait_until(
                lambda: load.sent >= sent + CLIENTS,
                LOAD_TIMEOUT_S,
                lambda: f"the load sent only {load.sent - sent} requests after the fault",
            )
            load.stop()  # the requests in flight end while the lost node is replaced
            if name in NODE_FAULTS:
                chaos.add_spot_node()
        finally:
            answers = load.join()
    log(f"{name}: the load ended")
    row = compare(name, answers, expected, chaos.failovers() - before)
    row.victim_mid_stream = mid_stream
    row.seconds = round(time.monotonic() - started, 1)
    chaos.wait_for_replicas()
    log(f"{name}: replicas recovered")
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
    log("head node up")
    try:
        chaos.serve()
        log("app up")
        expected = asyncio.run(reference(chaos.url))
        log("reference pass done")
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
        log("cluster down")


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
