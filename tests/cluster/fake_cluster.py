"""A Ray cluster on Ray's fake multi-node autoscaler, started and stopped without touching
anyone else's Ray on this shared machine.

`ray.cluster_utils.AutoscalingCluster` would run `ray stop --force` (every Ray process of the
user) and bind the default GCS port, so this starts `ray start --head` itself: free ports,
its own short temp dir, cluster/local-fake.yaml with its GCS address and idle timeouts
adjusted, autoscaler v2 (the one that follows label selectors and their fallbacks). Stopping
kills exactly the processes whose command line names that temp dir: the head's and every
fake node's raylet, agents and workers.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.serve_app.conftest import free_port

LOCAL_FAKE_YAML = Path(__file__).parents[2] / "cluster" / "local-fake.yaml"
FAKE_HEAD_NODE_ID = "f" * 51 + "00000"
RAY = str(Path(sys.executable).parent / "ray")


@dataclass
class FakeCluster:
    gcs_address: str
    temp_dir: Path
    config: dict

    @classmethod
    def start(cls, idle_timeout_s: float, serve_env: dict[str, str]) -> FakeCluster:
        temp_dir = Path(tempfile.mkdtemp(prefix="rf14_", dir="/tmp"))
        port = free_port()
        config = copy.deepcopy(yaml.safe_load(LOCAL_FAKE_YAML.read_text()))
        config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
        for node_type in config["available_node_types"].values():
            if "idle_timeout_s" in node_type:
                node_type["idle_timeout_s"] = idle_timeout_s
        head = config["available_node_types"][config["head_node_type"]]
        resources = dict(head["resources"])
        config_file = temp_dir / "autoscaling.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            **serve_env,
            "RAY_FAKE_CLUSTER": "1",
            "RAY_AUTH_MODE": "disabled",  # a token in ~/.ray would otherwise turn auth on
            "RAY_enable_autoscaler_v2": "1",
            "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID,
            "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID,
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        }
        command = [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={resources.pop('CPU')}",
            f"--resources={json.dumps(resources)}",
            f"--autoscaling-config={config_file}",
            "--include-dashboard=false",
            f"--dashboard-port={free_port()}",  # its minimal head still binds one (8265)
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            "--object-store-memory=100000000",
            # The log monitor only streams worker logs to drivers; the test's driver reads
            # the log files instead (log_to_driver=False), and it saves the 2 cores its CPU.
            "--include-log-monitor=false",
            "--disable-usage-stats",
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        cluster = cls(f"127.0.0.1:{port}", temp_dir, config)
        if done.returncode != 0:
            cluster.stop()  # whatever half of it started
            raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        return cluster

    @property
    def config_file(self) -> Path:
        return self.temp_dir / "autoscaling.yaml"

    def exhaust(self, node_type: str) -> None:
        """From now on no launch of `node_type` can serve anyone: a spot market that is out.

        Autoscaler v2 rereads its config every round. Lowering max_workers would also make
        it stop the running node of that type at once (over the limit), so the type's new
        nodes get a label nothing selects instead; the running node keeps its own labels.
        """
        labels = self.config["available_node_types"][node_type]["labels"]
        for key in labels:
            labels[key] = "exhausted"
        staged = self.config_file.with_suffix(".next")
        staged.write_text(yaml.safe_dump(self.config))
        staged.replace(self.config_file)  # atomic: the monitor never reads half a file

    def own_pids(self) -> list[int]:
        marker = str(self.temp_dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self) -> None:
        """SIGTERM (the Python processes exit within a fraction of a second, their logs
        flushed), then SIGKILL what is left after a second: the GCS and the raylets would
        take seconds over a graceful exit that a throwaway cluster does not need."""
        for sig, grace_s in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
            pids = self.own_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            wait_exited(pids, grace_s)
        if not os.environ.get("KEEP_FAKE_CLUSTER_LOGS"):  # to read a failed run's logs
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def node_pids(self, node_id: str) -> list[int]:
        """The processes of one fake node: what a preempted machine takes down with it."""
        marker = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
        pids = []
        for pid in self.own_pids():
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def kill_node(self, node_id: str) -> int:
        pids = self.node_pids(node_id)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)


def wait_exited(pids: list[int], timeout_s: float) -> None:
    """Until none of `pids` runs (a zombie counts as gone: it runs nothing), or timeout."""
    deadline = time.monotonic() + timeout_s
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (exited, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
