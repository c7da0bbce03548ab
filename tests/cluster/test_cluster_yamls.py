"""cluster/*.yaml pass Ray's own cluster-config schema validation, and agree with the app:
each GPU node type names its market by a custom resource and the capacity label placement
selects, spot types really ask the cloud for spot, the floor node type holds the deployed
floor, the head carries the ingress/batcher resource, and the Serve config a head deploys
is a valid one with placement on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppConfig, PlacementSettings, load_app_config
from serve_app.placement import FLOOR, ON_DEMAND, SPOT

ROOT = Path(__file__).parents[2]
CLUSTER_YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
CLOUD_YAMLS = [path for path in CLUSTER_YAMLS if path.stem != "local-fake"]
PLACEMENT = PlacementSettings()
MARKET_RESOURCE = {FLOOR: "on_demand", SPOT: "spot", ON_DEMAND: "on_demand"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_every_cluster_yaml_is_there():
    assert {path.stem for path in CLUSTER_YAMLS} >= {"aws-spot", "gcp-spot", "local-fake"}


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda path: path.stem)
def test_ray_validates_the_cluster_yaml(path):
    validate_config(prepare_config(load(path)))


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda path: path.stem)
def test_node_types_say_their_market_twice_and_the_head_hosts_the_frontend(path):
    config = load(path)
    node_types = config["available_node_types"]
    head = node_types.pop(config["head_node_type"])
    assert head["resources"][PLACEMENT.frontend_resource] > 0
    assert not head["resources"].get("GPU")
    capacities = set()
    for name, node_type in node_types.items():
        capacity = node_type["labels"][PLACEMENT.capacity_label]
        capacities.add(capacity)
        markets = {"spot", "on_demand"} & set(node_type["resources"])
        assert markets == {MARKET_RESOURCE[capacity]}, name
        assert node_type["resources"]["GPU"] >= 1, name
        assert PLACEMENT.frontend_resource not in node_type["resources"], name
        if capacity == FLOOR:
            assert node_type["min_workers"] == node_type["max_workers"] >= 1, name
    assert capacities == {FLOOR, SPOT, ON_DEMAND}


def asks_for_spot(node_config: dict) -> bool:
    aws = node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    gcp = node_config.get("scheduling", {}).get("provisioningModel") == "SPOT"
    return aws or gcp


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda path: path.stem)
def test_spot_types_and_only_they_ask_the_cloud_for_spot(path):
    config = load(path)
    for name, node_type in config["available_node_types"].items():
        assert asks_for_spot(node_type["node_config"]) == ("spot" in node_type["resources"]), name


def deployed_yaml(path: Path) -> str:
    """The name of the Serve config under deployments/ that the head deploys."""
    commands = " ".join(load(path)["head_start_ray_commands"]).split()
    [deployment] = [word for word in commands if "/deployments/" in word]
    return Path(deployment).name


def deployed_app(path: Path) -> AppConfig:
    """The Serve config the head deploys, validated as Serve and as our AppConfig."""
    raw = load(ROOT / "deployments" / deployed_yaml(path))
    [application] = ServeDeploySchema.model_validate(raw).applications
    return load_app_config(application.args)


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda path: path.stem)
def test_the_head_deploys_a_valid_spot_aware_app_whose_floor_fits(path):
    app = deployed_app(path)
    assert app.placement.enabled
    floor_type = next(
        node_type
        for node_type in load(path)["available_node_types"].values()
        if node_type.get("labels", {}).get(PLACEMENT.capacity_label) == FLOOR
    )
    replicas_per_node = floor_type["resources"]["GPU"] // max(app.replica.num_gpus, 1)
    assert floor_type["min_workers"] * replicas_per_node >= app.placement.on_demand_floor
    assert app.replica.autoscaling is not None and app.replica.autoscaling.policy == "engine_load"


def test_the_local_fake_deployment_matches_its_cluster():
    raw = load(ROOT / "deployments" / "local-fake.yaml")
    [application] = ServeDeploySchema.model_validate(raw).applications
    app = load_app_config(application.args)
    assert app.placement.enabled and app.model == "tiny"
    cluster = load(ROOT / "cluster" / "local-fake.yaml")
    gpu_nodes = [t for t in cluster["available_node_types"].values() if "labels" in t]
    assert all(node["resources"]["GPU"] == app.replica.num_gpus for node in gpu_nodes)


def test_the_readme_deploy_section_names_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying to a Ray cluster", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"(?:cluster|deployments)/[\w.-]+\.yaml", section))
    assert {"cluster/aws-spot.yaml", "deployments/gpu-spot.yaml"} <= named
    assert all((ROOT / path).is_file() for path in named), named
    heads_deploy = {deployed_yaml(path) for path in CLOUD_YAMLS}
    assert heads_deploy == {"gpu-spot.yaml"}
