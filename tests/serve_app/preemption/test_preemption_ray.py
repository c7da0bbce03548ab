"""End to end on a real two-node Ray cluster: the watcher CLI, fed a fake AWS spot notice by
a metadata server on loopback, drains its worker node through the GCS; the head lives on."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from serve_app import metrics
from tests.serve_app.conftest import free_port
from tests.serve_app.preemption.fake_metadata_server import FakeMetadataServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NOTICE_S = 60
SAFETY_MARGIN_S = 10


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 2**20}
    head = {
        **small,
        "gcs_server_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "include_dashboard": False,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        yield cluster
    finally:
        # Node by node: Cluster.shutdown() would also reset this process's Ray internal-KV
        # client, which the session's own Ray instance (conftest's live_app) still uses.
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)
        cluster.remove_node(cluster.head_node)


def node_states(gcs_address: str) -> dict[str, object]:
    from ray._raylet import GcsClient

    nodes = GcsClient(address=gcs_address).get_all_node_info(timeout=10)
    return {node_id.hex(): info for node_id, info in nodes.items()}


def scrape(url: str) -> dict[str, float]:
    """The watcher's samples; none while its metrics server is not up yet."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.ConnectError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("serve_app_preemption"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def test_watcher_drains_its_node_on_an_aws_spot_notice(cluster):
    from ray.core.generated import gcs_pb2

    from serve_app.preemption.drain import DrainError, RayNodeDrainer

    worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    # Two nodes share this host here, so the watcher must be told which one it guards.
    with pytest.raises(DrainError, match="pass --node-id"):
        RayNodeDrainer(cluster.address, node_id=None)
    head_id = cluster.head_node.node_id
    metrics_port = free_port()
    with FakeMetadataServer() as metadata:
        command = [
            sys.executable,
            "-m",
            "serve_app.preemption",
            "--provider=aws",
            f"--metadata-url={metadata.url}",
            f"--ray-address={cluster.address}",
            f"--node-id={worker.node_id}",
            "--poll-interval-s=0.2",
            f"--safety-margin-s={SAFETY_MARGIN_S}",
            f"--metrics-port={metrics_port}",
            "--metrics-host=127.0.0.1",
        ]
        watcher = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            polls = metrics.PREEMPTION_POLLS.series() + '{outcome="no_notice"}'
            wait_until(lambda: scrape(metrics_url).get(polls, 0) >= 2, timeout_s=60)
            assert node_states(cluster.address)[worker.node_id].state == gcs_pb2.GcsNodeInfo.ALIVE

            terminates_at = time.time() + NOTICE_S
            stamp = datetime.fromtimestamp(terminates_at, UTC)
            metadata.state.aws_notice = {
                "action": "terminate",
                "time": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            # An idle node drained for preemption leaves at once; a busy one by the deadline.
            wait_until(
                lambda: (
                    node_states(cluster.address)[worker.node_id].state == gcs_pb2.GcsNodeInfo.DEAD
                ),
                timeout_s=NOTICE_S - SAFETY_MARGIN_S - 5,
            )
            worker_info = node_states(cluster.address)[worker.node_id]
            assert (
                worker_info.death_info.reason == worker_info.death_info.AUTOSCALER_DRAIN_PREEMPTED
            )
            assert "aws preemption notice: terminate" in worker_info.death_info.reason_message
            assert node_states(cluster.address)[head_id].state == gcs_pb2.GcsNodeInfo.ALIVE

            samples = scrape(metrics_url)
            assert samples[metrics.PREEMPTION_DRAINS.series() + '{result="accepted"}'] == 1
            assert samples[metrics.PREEMPTION_NOTICES.series()] == 1
            assert metadata.state.count("PUT", "/latest/api/token") == 1  # one token, reused
        finally:
            watcher.terminate()
            _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, stderr
    assert f"node {worker.node_id} is draining" in stderr


def wait_until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not reached within {timeout_s} s"
        time.sleep(0.2)
