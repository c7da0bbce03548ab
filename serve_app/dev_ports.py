"""`make run`'s first step: every port the dev cluster will take must be free, or it stops
before touching anything.

A second `make run` beside a running one used to fail inside `ray start` (an AssertionError
from Ray), then deploy onto the FIRST cluster with its `serve run`, whose Ctrl-C deleted the
first terminal's app. Here it refuses at once and names the variable to change.

`make status` asks the other way round (`--running`): Ray's CLI on a port where nothing
listens retries for a minute and ends in a GCS-timeout traceback; here it is one line at
once, naming the variable (`make run RAY_PORT=...` needs the same on `make status`).

    python -m serve_app.dev_ports --running RAY_PORT=6379 DASHBOARD_PORT=8265
    python -m serve_app.dev_ports CONFIG RAY_PORT=6379 DASHBOARD_PORT=8265 METRICS_PORT=8080
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import yaml

from serve_app.cli_errors import report

SERVE_DEFAULT_HTTP_PORT = 8000
LOOPBACK = "127.0.0.1"  # where `make run`'s cluster is reached from this machine


class ServeConfigFileError(ValueError):
    """The Serve config file (CONFIG) cannot be read; the message says what to pass."""


def read_serve_config(path: Path) -> dict:
    """The Serve config file as a dict, or ServeConfigFileError naming the file and why."""
    try:
        serve_config = yaml.safe_load(path.read_text())
    except OSError as error:
        why = error.strerror
    except yaml.YAMLError as error:
        why = f"not YAML ({error})"
    else:
        if isinstance(serve_config, dict):
            return serve_config
        why = "not a Serve config (a YAML mapping with `applications`)"
    raise ServeConfigFileError(
        f"CONFIG {path}: {why}; pass a Serve config file, e.g. CONFIG=deployments/dev.yaml"
    )


def config_ports(config: Path) -> dict[str, int]:
    """The ports the Serve config's proxies listen on, named by where they are set."""
    serve_config = read_serve_config(config)
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


def not_answering(ports: dict[str, int]) -> str | None:
    """`make status`'s check: one line when a port of the dev cluster has nothing behind it."""
    missing = {name: port for name, port in ports.items() if not answers(LOOPBACK, port)}
    if not missing:
        return None
    where = ", ".join(f"{LOOPBACK}:{port} ({name})" for name, port in missing.items())
    variables = " ".join(f"{name}=..." for name in missing)
    return (
        f"no Ray cluster at {where}: start `make run` first, or pass the same {variables} "
        "you gave make run"
    )


def parse_assignments(assignments: list[str]) -> dict[str, int]:
    return {name: int(value) for name, value in (item.split("=", 1) for item in assignments)}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    if argv[0] == "--running":
        problem = not_answering(parse_assignments(argv[1:]))
        if problem:
            print(f"make status: {problem}", file=sys.stderr)
        return 1 if problem else 0
    config, ports = Path(argv[0]), parse_assignments(argv[1:])
    try:
        problems = taken({**ports, **config_ports(config)})
    except ServeConfigFileError as error:
        return report("make run", error)
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
