"""`make run`'s one line once the app answers: where its API, metrics, dashboard and request
logs are. Ray's and Serve's start-up print dozens of lines, and none says "ready" with the
address to use.

    python -m serve_app.ready_line CONFIG METRICS_PORT=8080 DASHBOARD_PORT=8265

`make run` starts it in the background beside `serve run`. It asks the config's HTTP
address for `/health` (200 once a model replica can serve) until it answers, prints the
line and exits. It also exits, silently, when `make run`'s shell is gone or on Ctrl-C, so
it never outlives the cluster it reports on.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from serve_app.dev_ports import (
    LOOPBACK,
    SERVE_DEFAULT_HTTP_PORT,
    parse_assignments,
    read_serve_config,
)

USAGE = "python -m serve_app.ready_line CONFIG METRICS_PORT=8080 DASHBOARD_PORT=8265"
POLL_S = 1.0
IMPORT_PATH = "serve_app.app:build_app"


def api_base(serve_config: dict) -> str:
    """The HTTP base URL of the config's serve_app application (`.../v1`)."""
    http = serve_config.get("http_options") or {}
    host = http.get("host") or LOOPBACK
    host = LOOPBACK if host in ("0.0.0.0", "::") else host  # every interface: loopback too
    port = int(http.get("port", SERVE_DEFAULT_HTTP_PORT))
    apps = serve_config.get("applications") or []
    prefix = next((app.get("route_prefix") or "/" for app in apps if is_ours(app)), "/")
    return f"http://{host}:{port}{prefix.rstrip('/')}"


def is_ours(application: dict) -> bool:
    return application.get("import_path") == IMPORT_PATH


def request_log_place(serve_config: dict) -> str:
    """Where the app's request log lines go (RequestLogSettings.file; serve_app/config.py)."""
    apps = [app for app in serve_config.get("applications") or [] if is_ours(app)]
    settings = ((apps[0].get("args") or {}).get("request_log") or {}) if apps else {}
    if settings.get("enabled") is False:
        return "off"
    file = settings.get("file")
    if file is None:
        return "the ingress's stderr (this terminal)"
    path = Path(file)
    if path.is_absolute():
        return str(path)
    # A relative file is in the session's log directory (serve_app/request_log.py); `make
    # run`'s `ray start` uses Ray's default temp dir, where `session_latest` is this session.
    from ray._common.utils import get_default_ray_temp_dir

    return str(Path(get_default_ray_temp_dir()) / "session_latest" / "logs" / path)


def ready_line(serve_config: dict, metrics_port: int, dashboard_port: int) -> str:
    return (
        f"serve-app ready at {api_base(serve_config)}/v1 | metrics "
        f"http://{LOOPBACK}:{metrics_port}/metrics | Ray dashboard "
        f"http://{LOOPBACK}:{dashboard_port} | request logs: {request_log_place(serve_config)}"
        " | Ctrl-C stops the app and the cluster"
    )


def healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def wait_then_print(line: str, base: str, parent: int) -> int:
    """Print `line` once the app is healthy; 1 without a word once the parent has gone."""
    while os.getppid() == parent:
        if healthy(base):
            print(line, flush=True)
            return 0
        time.sleep(POLL_S)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    serve_config = read_serve_config(Path(argv[0]))
    ports = parse_assignments(argv[1:])
    line = ready_line(serve_config, ports["METRICS_PORT"], ports["DASHBOARD_PORT"])
    try:
        return wait_then_print(line, api_base(serve_config), os.getppid())
    except KeyboardInterrupt:  # Ctrl-C reaches the whole foreground group: leave quietly
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
