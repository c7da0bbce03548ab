"""What the Ray cluster an application is about to be deployed on can hold, for the
start-up checks of serve_app/preflight.py.

The view is read from Ray itself: the total resources of each alive node and, when an
autoscaler has published its node types (cluster launcher, KubeRay), what one node of each
type would add. Where no cluster is running yet because `serve run` is about to start a
fresh local one, the view is this machine as Ray counts it (its CPUs and GPUs).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import ray
from ray._private import services, state

logger = logging.getLogger(__name__)

Resources = dict[str, float]


@dataclass(frozen=True)
class ClusterResources:
    """Resources per node: those running now and those an autoscaler may add."""

    where: str  # names the cluster in messages: "the Ray cluster at 127.0.0.1:6379"
    nodes: list[Resources]
    node_types: list[Resources] = field(default_factory=list)  # empty: it cannot grow

    @property
    def can_grow(self) -> bool:
        return bool(self.node_types)

    def largest_node(self) -> Resources:
        """Per resource, the most one node has or could have (for messages)."""
        largest: Resources = {}
        for node in self.nodes + self.node_types:
            for name, amount in node.items():
                largest[name] = max(largest.get(name, 0.0), amount)
        return largest

    def fits_one_node(self, need: Resources) -> bool:
        return any(_fits(need, node) for node in self.nodes + self.node_types)

    def total(self) -> Resources:
        total: Resources = {}
        for node in self.nodes:
            for name, amount in node.items():
                total[name] = total.get(name, 0.0) + amount
        return total


def _fits(need: Resources, node: Resources) -> bool:
    return all(amount <= node.get(name, 0.0) for name, amount in need.items() if amount > 0)


def current_cluster() -> ClusterResources:
    """The cluster this process is connected to; else the one `serve run` will use."""
    if ray.is_initialized():
        return _from_connected_ray()
    explicit = _serve_cli_address()
    if explicit is None:  # not "auto": a stale cluster file would make ray.init hang
        return this_machine()
    address = services.canonicalize_bootstrap_address(explicit)
    if address is None:
        return this_machine()
    # `serve run <import path>` calls build_app before it connects: connect briefly to the
    # cluster it is about to use (it connects again on its own), read it, disconnect.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        return _from_connected_ray()
    finally:
        ray.shutdown()


def this_machine() -> ClusterResources:
    """What a new local Ray instance on this machine would have."""
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    return ClusterResources(
        where="this machine (the new local Ray instance `serve run` starts)",
        nodes=[{"CPU": float(get_num_cpus()), "GPU": float(gpus)}],
    )


def _from_connected_ray() -> ClusterResources:
    nodes = [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]
    return ClusterResources(
        where=f"the Ray cluster at {ray.get_runtime_context().gcs_address}",
        nodes=nodes,
        node_types=_autoscaler_node_types(),
    )


def _autoscaler_node_types() -> list[Resources]:
    """The node types an autoscaler may still start (none on a fixed cluster such as
    `ray start`'s). Ray keeps them in the cluster config that the autoscaler publishes."""
    config = state.state.get_cluster_config()
    if config is None:
        return []
    return [
        dict(group.resources)
        for group in config.node_group_configs
        if group.max_count != 0 and group.resources
    ]


def _serve_cli_address() -> str | None:
    """The `--address` of the `serve run` command calling build_app, if that is what is
    running; else RAY_ADDRESS, as `ray.init` reads it."""
    import click

    context = click.get_current_context(silent=True)
    if context is not None and context.params.get("address"):
        return context.params["address"]
    return os.environ.get("RAY_ADDRESS") or None
