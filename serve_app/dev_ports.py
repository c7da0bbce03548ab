"""`make run`'s first step: every port the dev cluster will take must be free, or it stops
before touching anything.

A second `make run` beside a running one used to fail inside `ray start` (an AssertionError
from Ray), then deploy onto the FIRST cluster with its `serve run`, whose Ctrl-C deleted the
first terminal's app. Here it refuses at once and names the variable to change.

    python -m serve_app.dev_ports CONFIG RAY_PORT=6379 DASHBOARD_PORT=8265 METRICS_PORT=8080
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import yaml

SERVE_DEFAULT_HTTP_PORT = 8000


def config_ports(config: Path) -> dict[str, int]:
    """The ports the Serve config's proxies listen on, named by where they are set."""
    serve_config = yaml.safe_load(config.read_text()) or {}
    http = serve_config.get("http_options") or {}
    ports = {f"{config}: http_options.port": int(http.get("port", SERVE_DEFAULT_HTTP_PORT))}
    grpc = serve_config.get("grpc_options") or {}
    if grpc.get("grpc_servicer_functions"):
        ports[f"{config}: grpc_options.port"] = int(grpc.get("port", 9000))
    return ports


def answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether something accepts connections at host:port."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def in_use(port: int) -> bool:
    """Whether something accepts connections on this port (any local address)."""
    return any(answers(host, port) for host in ("127.0.0.1", "::1"))


def taken(ports: dict[str, int]) -> list[str]:
    return [f"port {port} ({name}) is in use" for name, port in ports.items() if in_use(port)]


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    config, assignments = Path(argv[0]), argv[1:]
    ports = {name: int(value) for name, value in (item.split("=", 1) for item in assignments)}
    problems = taken({**ports, **config_ports(config)})
    if problems:
        print(
            "make run: " + "; ".join(problems) + ". Is another `make run` (or Ray) running? "
            "Stop it, or give this one other ports: make run RAY_PORT=... DASHBOARD_PORT=... "
            "METRICS_PORT=... CONFIG=<a config with other http_options.port / "
            "grpc_options.port> (and the same variables to make status / make deploy).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
