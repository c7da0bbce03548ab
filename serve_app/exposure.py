"""The start-up warning for a Serve port that other machines can reach while the app
has no API keys: anyone on the network could then use the model.

HTTP is exposed when Serve's `http_options.host` is not a loopback address. gRPC is exposed
whenever it is on (a Serve config with `grpc_servicer_functions`): Ray Serve 2.60's gRPC
proxy always listens on all interfaces (`[::]:<port>`) and has no host option, so the fix
differs per port: each exposed port carries its own.

Whether keys are on is the caller's to say: the preflight asks the serving side
(serve_app/auth_state.py); `build_app` on the cluster reads its own environment, which is
the serving one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from serve_app.config import AuthSettings
from serve_app.ingress.auth import ApiKeys

logger = logging.getLogger("serve_app")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
KEYS_ADVICE = "README 'Where API keys are read'"


@dataclass(frozen=True, slots=True)
class ExposedPort:
    what: str  # `HTTP (0.0.0.0:8000)`
    fix: str  # what closes this port to other machines


def exposed_ports(http_options: dict[str, Any], grpc_options: dict[str, Any]) -> list[ExposedPort]:
    """The Serve ports reachable beyond this machine, each with how to close it.

    The arguments are the `http_options` / `grpc_options` of a Serve config (or of the
    running Serve instance); absent keys take Serve's defaults.
    """
    exposed = []
    host = http_options.get("host", "0.0.0.0")  # Serve config files default to all interfaces
    if host is not None and host not in LOOPBACK_HOSTS:
        port = http_options.get("port", 8000)
        exposed.append(ExposedPort(f"HTTP ({host}:{port})", "set http_options.host: 127.0.0.1"))
    if grpc_options.get("grpc_servicer_functions"):
        port = grpc_options.get("port", 9000)
        exposed.append(
            ExposedPort(
                f"gRPC ([::]:{port}, all interfaces)",
                "Ray Serve's gRPC proxy has no host option: leave grpc_options out of the "
                f"Serve config (deployments/dev.yaml does) or firewall port {port}",
            )
        )
    return exposed


def exposure_warning(
    http_options: dict[str, Any],
    grpc_options: dict[str, Any],
    auth: AuthSettings,
    keys_enabled: bool,
) -> str | None:
    """The warning to print, or None when nothing is exposed or the app has API keys
    (`keys_enabled`: as the serving processes resolve `auth`)."""
    exposed = exposed_ports(http_options, grpc_options)
    if not exposed or keys_enabled:
        return None
    ports = "; ".join(f"{port.what}: {port.fix}" for port in exposed)
    env = (
        f"{auth.api_keys_env} in the serving processes' environment, or "
        if auth.api_keys_env
        else ""
    )
    return (
        "EXPOSED WITHOUT API KEYS: anyone who can reach this host can use the model. "
        f"{ports}. Or turn API keys on: {env}auth.api_keys_file ({KEYS_ADVICE})."
    )


def warn_if_exposed(auth: AuthSettings) -> None:
    """Log the warning for the running Serve instance's options (when build_app runs on
    the cluster, as for a Serve config file, with the application's runtime_env: its
    environment is the ingress's); nothing when Serve is not running here."""
    options = _running_serve_options()
    if options is None:
        return
    warning = exposure_warning(*options, auth, ApiKeys.from_settings(auth).enabled)
    if warning:
        logger.warning(warning)


def _running_serve_options() -> tuple[dict[str, Any], dict[str, Any]] | None:
    import ray

    if not ray.is_initialized():
        return None
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    details = client.get_serve_details()
    return details.get("http_options") or {}, details.get("grpc_options") or {}
