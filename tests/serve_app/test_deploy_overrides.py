"""The preflight refuses a Serve config whose `deployments:` overrides a deploy would apply
badly: a Batcher user_config its policy rejects (Serve would take the Batcher down with it),
a deployment the app does not have, a user_config on a deployment that takes none, a Serve
option that is unknown (Serve drops it silently) or invalid. One line each, naming the field
and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.batcher.deployment import Batcher
from serve_app.cluster_resources import ClusterResources
from serve_app.deploy_overrides import override_problems
from serve_app.deployment_names import app_deployments
from serve_app.ingress.http import OpenAIIngress
from serve_app.preflight import check_config_file
from serve_app.replica.deployment import ModelReplica

REPO = Path(__file__).resolve().parents[2]
TWO_CPUS = ClusterResources(where="a 2-CPU box", nodes=[{"CPU": 2.0}])
POLICY_FIELDS = "max_batch_size, max_wait_ms, smoothing, target_ttft_ms"


def application(*overrides: dict, args: dict | None = None) -> dict:
    return {
        "name": "llm",
        "import_path": "serve_app.app:build_app",
        "args": args or {"model": "tiny"},
        "deployments": list(overrides),
    }


def test_a_batch_policy_typo_in_a_config_file_is_one_preflight_line(tmp_path: Path):
    config = yaml.safe_load((REPO / "deployments" / "dev.yaml").read_text())
    [batcher] = config["applications"][0]["deployments"]
    batcher["user_config"]["max_wiat_ms"] = batcher["user_config"].pop("max_wait_ms")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(config))
    assert check_config_file(typo, TWO_CPUS) == [
        f"{typo} application 'llm' deployment 'Batcher' user_config: "
        f"unknown field 'max_wiat_ms' (allowed: {POLICY_FIELDS})"
    ]


def test_every_bad_knob_of_a_user_config_has_its_line():
    batcher = {"name": "Batcher", "user_config": {"max_batch_size": 0, "max_wait_ms": -1}}
    assert override_problems(application(batcher)) == [
        "deployment 'Batcher' user_config: max_batch_size: Input should be greater than or "
        "equal to 1, got 0 (allowed: an int in [1, 4096])",
        "deployment 'Batcher' user_config: max_wait_ms: Input should be greater than or "
        "equal to 0, got -1 (allowed: a number in [0, 60000])",
    ]


def test_a_deployment_the_app_does_not_have_is_named_with_the_ones_it_has():
    assert override_problems(application({"name": "Batch", "num_replicas": 2})) == [
        "deployments[0]: unknown deployment 'Batch' (allowed: Batcher, ModelReplica, OpenAIIngress)"
    ]
    without_batcher = application({"name": "Batcher"}, args={"batcher": {"enabled": False}})
    assert override_problems(without_batcher) == [
        "deployments[0]: unknown deployment 'Batcher' (allowed: ModelReplica, OpenAIIngress)"
    ]


@pytest.mark.parametrize("name", ["OpenAIIngress", "ModelReplica"])
def test_a_user_config_on_a_deployment_that_takes_none_is_refused(name: str):
    assert override_problems(application({"name": name, "user_config": {}})) == [
        f"deployment {name!r} user_config: this deployment takes none (only Batcher does)"
    ]


def test_serve_options_are_checked_with_serves_own_schema():
    [unknown] = override_problems(application({"name": "ModelReplica", "num_replica": 2}))
    assert unknown.startswith("deployment 'ModelReplica' num_replica: unknown deployment option")
    assert "max_ongoing_requests, " in unknown and "num_replicas, " in unknown
    [invalid] = override_problems(application({"name": "Batcher", "max_ongoing_requests": "x"}))
    assert invalid.startswith(
        "deployment 'Batcher' max_ongoing_requests: Input should be a valid integer"
    )


def test_valid_overrides_and_the_repositorys_configs_pass():
    policy = {"target_ttft_ms": 150, "max_batch_size": 7, "max_wait_ms": 3, "smoothing": 0.5}
    batcher = {"name": "Batcher", "num_replicas": 1, "user_config": policy}
    assert override_problems(application(batcher, {"name": "Batcher", "user_config": None})) == []
    for path in sorted((REPO / "deployments").glob("*.yaml")):
        for app in yaml.safe_load(path.read_text())["applications"]:
            assert override_problems(app) == [], path.name


def test_only_the_deployments_with_a_reconfigure_method_take_a_user_config():
    """Serve fails a replica given a user_config without `reconfigure` to apply it."""
    classes = {"Batcher": Batcher, "OpenAIIngress": OpenAIIngress, "ModelReplica": ModelReplica}
    for name, model in app_deployments(None).items():
        assert hasattr(classes[name], "reconfigure") == (model is not None), name
