"""Spot-aware placement: off on a dev box; on a cluster the model replicas prefer the
on-demand floor, then spot, then on-demand burst nodes, and the ingress and batcher need the
on-demand CPU resource. Ray's and Serve's own validators accept what we derive."""

from __future__ import annotations

from ray._private.label_utils import validate_fallback_strategy, validate_label_selector
from ray.serve._private.config import ReplicaConfig

from serve_app.app import batcher_options, build_app, ingress_options, replica_options
from serve_app.config import load_app_config
from serve_app.placement import (
    FLOOR,
    ON_DEMAND,
    SPOT,
    capacity_order,
    with_frontend_placement,
    with_replica_placement,
)
from serve_app.replica.deployment import ModelReplica

CLUSTER = {"placement": {"enabled": True, "on_demand_floor": 1}}
LABEL = "serve-app/capacity"


def test_a_dev_box_gets_no_placement_constraints():
    config = load_app_config({})
    assert with_replica_placement(config, replica_options(config)) == replica_options(config)
    assert with_frontend_placement(config, ingress_options(config)) == ingress_options(config)


def test_replicas_prefer_the_floor_then_spot_then_on_demand_burst():
    config = load_app_config(CLUSTER | {"replica": {"num_gpus": 1}})
    actor = with_replica_placement(config, replica_options(config))["ray_actor_options"]
    assert actor["num_gpus"] == 1  # the resources stay as they were
    assert actor["label_selector"] == {LABEL: FLOOR}
    assert actor["fallback_strategy"] == [
        {"label_selector": {LABEL: SPOT}},
        {"label_selector": {LABEL: ON_DEMAND}},
    ]
    assert validate_label_selector(actor["label_selector"]) is None
    assert validate_fallback_strategy(actor["fallback_strategy"]) is None
    # Serve's own replica config takes them as actor options.
    ReplicaConfig.create(ModelReplica, init_args=(config,), ray_actor_options=actor)


def test_without_a_floor_replicas_prefer_spot():
    config = load_app_config({"placement": {"enabled": True, "on_demand_floor": 0}})
    assert capacity_order(config) == [SPOT, ON_DEMAND]


def test_tensor_parallel_bundles_stay_on_gpu_capacity_of_any_class():
    config = load_app_config(
        CLUSTER | {"engine": {"tensor_parallel_size": 2}, "replica": {"num_cpus": 1}}
    )
    options = with_replica_placement(config, replica_options(config))
    selectors = options["placement_group_bundle_label_selector"]
    assert selectors == [{LABEL: f"in({FLOOR},{SPOT},{ON_DEMAND})"}] * 2
    assert validate_label_selector(selectors[0]) is None


def test_ingress_and_batcher_need_the_on_demand_cpu_resource():
    config = load_app_config(
        CLUSTER | {"placement": {**CLUSTER["placement"], "frontend_resource": "head_cpu"}}
    )
    for options in (ingress_options(config), batcher_options(config)):
        placed = with_frontend_placement(config, options)
        assert placed["ray_actor_options"]["resources"] == {"head_cpu": 0.001}
        assert placed["ray_actor_options"]["num_cpus"] == options["ray_actor_options"]["num_cpus"]


def test_build_app_applies_placement_to_every_deployment():
    app = build_app(CLUSTER)
    ingress = app._bound_deployment
    batcher = ingress.init_args[1]._bound_deployment
    replica = batcher.init_args[1]._bound_deployment
    assert "on_demand_cpu" in ingress.ray_actor_options["resources"]
    assert "on_demand_cpu" in batcher.ray_actor_options["resources"]
    assert replica.ray_actor_options["label_selector"] == {LABEL: FLOOR}
