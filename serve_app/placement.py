"""Spot-aware placement: which Ray nodes each deployment may use on a cluster.

The cluster YAMLs (cluster/*.yaml) label every GPU node type with its capacity class,
`serve-app/capacity` = `on-demand-floor` (min_workers = max_workers = the floor's nodes),
`spot`, or `on-demand` (burst, launched only when spot cannot be had); they also give each
node a custom resource saying `spot` or `on_demand`, and the on-demand CPU nodes (the head)
`on_demand_cpu`.

A model replica asks for the floor nodes first, then spot, then on-demand burst (Ray's
`label_selector` + `fallback_strategy`, which Serve passes to the replica actor and the Ray
autoscaler follows when it picks a node type to launch). Serve's scale-down removes replicas
on nodes that do not match the first choice before those that do, so the floor is the last
to go and the replicas above it go first. When spot is preempted, the lost replicas are
restarted by Serve and land on burst on-demand nodes; those are removed first once load
allows. The ingress and batcher hold live streams and request state, so they need the
on-demand CPU resource. With `placement.enabled` false (a dev box) nothing is added.
"""

from __future__ import annotations

from typing import Any

from serve_app.config import AppConfig

FLOOR = "on-demand-floor"
SPOT = "spot"
ON_DEMAND = "on-demand"
# A token amount: the resource marks a node class, it does not count capacity.
FRONTEND_RESOURCE_AMOUNT = 0.001


def capacity_order(config: AppConfig) -> list[str]:
    """The capacity classes a model replica tries, cheapest that keeps the floor first."""
    first = FLOOR if config.placement.on_demand_floor > 0 else SPOT
    return [first] + [kind for kind in (SPOT, ON_DEMAND) if kind != first]


def with_replica_placement(config: AppConfig, options: dict[str, Any]) -> dict[str, Any]:
    """`options` (a model replica's Serve options) plus its spot-aware node preference."""
    if not config.placement.enabled:
        return options
    label = config.placement.capacity_label
    first, *fallbacks = capacity_order(config)
    if "placement_group_bundles" in options:
        # TP > 1: Serve 2.60 takes no fallback for placement groups, so the ranks' bundles
        # accept any GPU capacity class, in no order (docs/deploy.md: known limits).
        any_class = {label: f"in({','.join([first, *fallbacks])})"}
        count = len(options["placement_group_bundles"])
        return {**options, "placement_group_bundle_label_selector": [any_class] * count}
    actor_options = {
        **options.get("ray_actor_options", {}),
        "label_selector": {label: first},
        "fallback_strategy": [{"label_selector": {label: kind}} for kind in fallbacks],
    }
    return {**options, "ray_actor_options": actor_options}


def with_frontend_placement(config: AppConfig, options: dict[str, Any]) -> dict[str, Any]:
    """`options` (the ingress's or batcher's) pinned to on-demand CPU nodes on a cluster."""
    if not config.placement.enabled:
        return options
    actor_options = dict(options.get("ray_actor_options", {}))
    resources = dict(actor_options.get("resources", {}))
    resources[config.placement.frontend_resource] = FRONTEND_RESOURCE_AMOUNT
    actor_options["resources"] = resources
    return {**options, "ray_actor_options": actor_options}
