"""`python -m serve_app.preemption --provider aws|gcp|file ...`: run the watcher on this node.

Every option is a WatcherConfig field (dashes for underscores); `--help` lists them. Once the
node is draining the watcher stays up (serving its metrics) until SIGTERM/SIGINT or the
machine goes; exit status 0 after a drain, 1 when stopped before any, 2 on an invalid config
or an unreachable Ray cluster. Where RAY_AUTH_MODE is unset and the node has Ray's token,
it runs in token mode (drain.use_token_auth_where_a_token_exists).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import httpx
from prometheus_client import CollectorRegistry, start_http_server

from serve_app.cli_errors import report
from serve_app.preemption.config import WatcherConfig, WatcherConfigError, load_watcher_config
from serve_app.preemption.drain import (
    DrainError,
    RayNodeDrainer,
    use_token_auth_where_a_token_exists,
)
from serve_app.preemption.notices import notice_source
from serve_app.preemption.watcher import PreemptionWatcher, WatcherMetrics

logger = logging.getLogger("serve_app.preemption")


def parse_args(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m serve_app.preemption", description=__doc__)
    for name, field in WatcherConfig.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=field.description)
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs every poll")
    values = vars(parser.parse_args(argv))
    logging.basicConfig(
        level=values.pop("log_level").upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    return values


def main(argv: list[str] | None = None) -> int:
    try:
        config = load_watcher_config(parse_args(argv))
        use_token_auth_where_a_token_exists()
        drainer = RayNodeDrainer(config.ray_address, config.node_id, config.request_timeout_s)
    except (WatcherConfigError, DrainError) as error:
        report("serve_app.preemption", error)  # one line naming the option and the fix
        return 2
    registry = CollectorRegistry()
    watcher_metrics = WatcherMetrics.create(registry)
    if config.metrics_port:
        start_http_server(config.metrics_port, config.metrics_host, registry)
        logger.info(
            "preemption watcher: metrics on %s:%d", config.metrics_host, config.metrics_port
        )
    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())
    # Never through an HTTP proxy from the environment: metadata services are node-local.
    with httpx.Client(timeout=config.request_timeout_s, trust_env=False) as http:
        watcher = PreemptionWatcher(
            notice_source(config, http), drainer, watcher_metrics, config.safety_margin_s
        )
        drained = watcher.run(config.poll_interval_s, stop)
    stop.wait()  # keep the drain's metrics scrapeable until the machine goes
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
