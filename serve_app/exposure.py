"""The start-up warning for a Serve port that other machines can reach while the app
has no API keys: anyone on the network could then use the model.

HTTP is exposed when Serve's `http_options.host` is not a loopback address. gRPC is exposed
whenever it is on (a Serve config with `grpc_servicer_functions`): Ray Serve 2.60's gRPC
proxy always listens on all interfaces (`[::]:<port>`) and has no host option.
"""

from __future__ import annotations

import logging
from typing import Any

from serve_app.config import AuthSettings
from serve_app.ingress.auth import ApiKeys

logger = logging.getLogger("serve_app")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def exposed_ports(http_options: dict[str, Any], grpc_options: dict[str, Any]) -> list[str]:
    """The Serve ports reachable beyond this machine, as `what (address)` strings.

    The arguments are the `http_options` / `grpc_options` of a Serve config (or of the
    running Serve instance); absent keys take Serve's defaults.
    """
    exposed = []
    host = http_options.get("host", "0.0.0.0")  # Serve config files default to all interfaces
    if host is not None and host not in LOOPBACK_HOSTS:
        exposed.append(f"HTTP ({host}:{http_options.get('port', 8000)})")
    if grpc_options.get("grpc_servicer_functions"):
        exposed.append(f"gRPC ([::]:{grpc_options.get('port', 9000)}, all interfaces)")
    return exposed


def exposure_warning(
    http_options: dict[str, Any], grpc_options: dict[str, Any], auth: AuthSettings
) -> str | None:
    """The warning to print, or None when nothing is exposed or API keys are on."""
    exposed = exposed_ports(http_options, grpc_options)
    if not exposed or ApiKeys.from_settings(auth).enabled:
        return None
    return (
        f"EXPOSED WITHOUT API KEYS: {', '.join(exposed)} can be reached from other machines "
        f"and no API key is configured, so anyone who can reach this host can use the "
        f"model. Set {auth.api_keys_env or 'auth.api_keys_env'} or auth.api_keys_file, "
        "bind HTTP to 127.0.0.1, or leave grpc_options out of the Serve config "
        "(deployments/dev.yaml does both)."
    )


def warn_if_exposed(auth: AuthSettings) -> None:
    """Log the warning for the running Serve instance's options (when build_app runs on
    the cluster, as for a Serve config file); nothing when Serve is not running here."""
    options = _running_serve_options()
    if options is None:
        return
    warning = exposure_warning(*options, auth)
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
