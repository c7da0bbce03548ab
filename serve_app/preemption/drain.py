"""Drain one Ray node through the GCS, as `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`.

A PREEMPTION drain cannot be rejected by the raylet: the node stops taking new work, Serve
starts replacement replicas elsewhere, and the deadline tells everyone when it goes away.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from serve_app.dev_ports import answers

PREEMPTION_REASON_NAME = "DRAIN_NODE_REASON_PREEMPTION"


class DrainError(RuntimeError):
    """The drain could not be requested (the GCS is unreachable, the node unknown)."""


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def use_token_auth_where_a_token_exists() -> None:
    """Token mode when RAY_AUTH_MODE is unset and this node has Ray's token (RAY_AUTH_TOKEN,
    the file at RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token, as Ray's loader looks). A Ray 2.60
    cluster with token auth (as `make run` starts) refuses a client that sends no token, and
    Ray sends it only in token mode: without this the watcher failed there unless every
    node's setup exported RAY_AUTH_MODE=token."""
    if AUTH_MODE_ENV in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth
    from ray._raylet import AuthenticationTokenLoader

    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        _enable_token_auth()  # the variable, and Ray's cached config re-read (it was imported)


@dataclass(frozen=True, slots=True)
class DrainResult:
    accepted: bool
    rejection_message: str  # empty when accepted


class RayNodeDrainer:
    """Asks the GCS at `ray_address` to drain `node_id` (hex) with reason PREEMPTION."""

    def __init__(self, ray_address: str, node_id: str | None, rpc_timeout_s: float = 10.0):
        import ray._private.services as services
        from ray._raylet import GcsClient

        # An explicit host:port is used as given: Ray's canonical form would swap a
        # loopback host for this machine's IP, where a loopback-only GCS is not listening.
        if ray_address == "auto":
            try:
                self.gcs_address = services.canonicalize_bootstrap_address_or_die(ray_address)
            except Exception:  # Ray's ConnectionError names its own CLI's `--address`
                raise DrainError(
                    "ray_address: found no Ray cluster on this node (auto: $RAY_ADDRESS, "
                    "else the latest `ray start` here); pass --ray-address host:port of the "
                    "cluster's GCS (`make run`'s: 127.0.0.1:RAY_PORT)"
                ) from None
        else:
            self.gcs_address = ray_address
        host, _, port = self.gcs_address.rpartition(":")
        if not port.isdigit() or not answers(host, int(port), timeout_s=rpc_timeout_s):
            # GcsClient would retry for a minute before saying so.
            raise DrainError(
                f"ray_address: nothing answers at {self.gcs_address}; pass --ray-address "
                "host:port of a running cluster's GCS"
            )
        try:
            self._gcs = GcsClient(address=self.gcs_address)
        except Exception as error:  # Ray raises ConnectionError, RuntimeError or SystemExit
            raise DrainError(
                f"ray_address: cannot reach the GCS at {self.gcs_address}: {error}"
            ) from None
        self._rpc_timeout_s = rpc_timeout_s
        self.node_id = node_id or self._node_on_this_host()

    def drain(self, deadline_epoch_s: float, message: str) -> DrainResult:
        from ray.core.generated import autoscaler_pb2

        reason = autoscaler_pb2.DrainNodeReason.Value(PREEMPTION_REASON_NAME)
        # The GCS reads the node id as hex; 0 would mean "no deadline", so keep it positive.
        deadline_ms = max(int(deadline_epoch_s * 1000), 1)
        try:
            accepted, rejection = self._gcs.drain_node(
                self.node_id, reason, message, deadline_ms, timeout=self._rpc_timeout_s
            )
        except Exception as error:
            raise DrainError(f"drain of node {self.node_id} failed: {error!r}") from None
        return DrainResult(bool(accepted), rejection or "")

    def _node_on_this_host(self) -> str:
        """The id of the one alive Ray node whose address is one of this host's."""
        from ray._private.services import get_node_ip_address

        addresses = {get_node_ip_address(), socket.gethostbyname(socket.gethostname())}
        nodes = self._gcs.get_all_node_info(timeout=self._rpc_timeout_s)
        mine = [
            node_id.hex()
            for node_id, info in nodes.items()
            if info.state == info.ALIVE and info.node_manager_address in addresses
        ]
        if len(mine) != 1:
            raise DrainError(
                f"node_id: found {len(mine)} alive Ray nodes at {sorted(addresses)}; "
                "pass --node-id (hex) to pick the node this watcher guards"
            )
        return mine[0]
