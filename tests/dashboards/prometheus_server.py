"""A real Prometheus (Debian's package) for tests: loopback, a free port, a temp dir, a
1 s scrape and rule-evaluation interval; queried through its HTTP API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:  # .ci/run installs Debian's prometheus package
        pytest.fail(f"{binary} not found: apt-get install prometheus (.ci/run does)")
    return path


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict]:
        """An instant query's result vector; raises with Prometheus' error if it is invalid."""
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=30)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        return httpx.get(self.url + "/api/v1/alerts", timeout=30).json()["data"]["alerts"]

    def rule_names(self) -> list[str]:
        groups = httpx.get(self.url + "/api/v1/rules", timeout=30).json()["data"]["groups"]
        return [rule["name"] for group in groups for rule in group["rules"]]


def wait_until(check: Callable[[], object], timeout_s: float, what: str, period_s: float = 1.0):
    """Poll `check` until it returns something truthy; fail naming `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"timed out after {timeout_s:.0f}s waiting for {what}"
            return result
        time.sleep(period_s)


@contextmanager
def running_prometheus(
    work_dir: Path, targets: list[str], rules: dict | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port, path /metrics) every second."""
    config: dict = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "serve_app", "static_configs": [{"targets": targets}]}],
    }
    if rules is not None:
        rule_file = work_dir / "rules.yaml"
        rule_file.write_text(yaml.safe_dump(rules))
        config["rule_files"] = [str(rule_file)]
    config_file = work_dir / "prometheus.yaml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            require("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work_dir / "prometheus.log").open("w"),
    )
    server = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert process.poll() is None, (work_dir / "prometheus.log").read_text()
            try:
                return httpx.get(server.url + "/-/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, STARTUP_TIMEOUT_S, "Prometheus to start", period_s=0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
