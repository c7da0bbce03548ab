"""The dev cluster started the README's way: `make run` in its own process group, as a
terminal runs it, stopped with Ctrl-C's SIGINT when the module using it ends.

Only what must differ on a shared machine differs: the ports (free ones, given as the
Makefile's variables and in a copy of the Serve config), Ray's temp directory (so no other
Ray instance on this machine is found or disturbed) and the auth token file (so the
user's ~/.ray/auth_token is left alone). The config is deployments/dev-grpc.yaml, a superset
of dev.yaml, so the README's HTTP and gRPC examples run against one app.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).parents[2]
START_TIMEOUT_S = 300  # a 2-core box shared with other test runs starts Ray slowly
STOP_TIMEOUT_S = 30  # per signal; Ctrl-C takes some 12 s here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class DevCluster:
    http_port: int
    grpc_port: int
    ray_port: int
    dashboard_port: int
    metrics_port: int
    config: Path  # the Serve config `make run` serves (a copy of dev-grpc.yaml)
    env: dict[str, str]  # what a command run against this cluster needs
    log: Path  # `make run`'s output

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def run(self, command: list[str] | str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            command,
            shell=isinstance(command, str),
            executable="/bin/bash" if isinstance(command, str) else None,
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def serve_details(self) -> dict:
        """Serve's REST view of the cluster (what `serve status` prints), with Ray's token."""
        token = Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        response = httpx.get(
            f"http://127.0.0.1:{self.dashboard_port}/api/serve/applications/",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()


def write_config(source: Path, target: Path, http_port: int, grpc_port: int) -> Path:
    config = yaml.safe_load(source.read_text())
    config["http_options"]["port"] = http_port
    if "grpc_options" in config:
        config["grpc_options"]["port"] = grpc_port
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def wait_until_serving(cluster: DevCluster, process: subprocess.Popen) -> None:
    """Until a completion comes back: the whole graph is up, and metrics exist."""
    deadline = time.monotonic() + START_TIMEOUT_S
    body = {"model": "tiny", "prompt": "warm up", "max_tokens": 2}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"make run exited ({process.returncode}):\n{cluster.log.read_text()}")
        try:
            response = httpx.post(f"{cluster.base_url}/v1/completions", json=body, timeout=30)
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"make run did not serve within {START_TIMEOUT_S} s:\n{cluster.log.read_text()}")


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C: SIGINT to the foreground group; `make run`'s trap then stops Ray. If that
    hangs (once in a suite run, `serve run`'s shutdown took over 90 s), SIGTERM, which
    `ray start --block` answers by draining and stopping Ray's processes, then SIGKILL."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            os.killpg(process.pid, stop_signal)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")  # stopped once the README module is done
def dev_cluster() -> Iterator[DevCluster]:
    # Short: Ray's Unix socket paths live under it and must stay under ~100 characters.
    workdir = Path(tempfile.mkdtemp(prefix="devcl", dir="/tmp"))
    token = workdir / "auth_token"
    token.write_text(secrets.token_hex(32))
    ports = [free_port() for _ in range(7)]
    http_port, grpc_port, ray_port, dashboard_port, metrics_port, agent_port, client_port = ports
    config = write_config(
        REPO / "deployments" / "dev-grpc.yaml", workdir / "dev.yaml", http_port, grpc_port
    )
    make_vars = {
        "CONFIG": str(config),
        "RAY_PORT": str(ray_port),
        "DASHBOARD_PORT": str(dashboard_port),
        "METRICS_PORT": str(metrics_port),
        "RAY_START_ARGS": f"--dashboard-agent-listen-port={agent_port} "
        f"--ray-client-server-port={client_port}",
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MAKE", "MFLAGS"))},
        **make_vars,  # make reads unset variables from the environment, so `make status` works
        "RAY_TMPDIR": str(workdir),
        "RAY_AUTH_TOKEN_PATH": str(token),
        # Where Ray's CLI looks by default (127.0.0.1:6379, localhost:8265), moved to ours.
        "RAY_ADDRESS": f"127.0.0.1:{ray_port}",
        "RAY_DASHBOARD_ADDRESS": f"http://127.0.0.1:{dashboard_port}",
    }
    cluster = DevCluster(
        http_port, grpc_port, ray_port, dashboard_port, metrics_port, config, env, workdir / "log"
    )
    with cluster.log.open("w") as log:
        process = subprocess.Popen(
            ["make", "run"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_serving(cluster, process)
        yield cluster
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
