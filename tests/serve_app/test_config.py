"""AppConfig: unknown or invalid fields fail with the field's name; key=value builder args and
deployments/dev.yaml are accepted; deployment options come from the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import ingress_options, replica_options
from serve_app.config import AppConfigError, load_app_config

DEV_YAML = Path(__file__).parents[2] / "deployments" / "dev.yaml"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"modle": "tiny"}, "modle"),
        ({"replica": {"num_cpu": 1}}, "replica.num_cpu"),
        ({"engine.max_num_seq": 4}, "engine.max_num_seq"),
        ({"engine": {"block_size": 7}}, "EngineConfig.block_size"),
        ({"replica.num_cpus": "lots"}, "replica.num_cpus"),
        ({"limits": {"max_tokens": 0}}, "limits.max_tokens"),
        ({"limits": {"default_max_tokens": 64, "max_tokens": 32}}, "default_max_tokens"),
        ({"replica": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "min_replicas"),
        ({"model": "tiny", "engine": {"model": "other"}}, "engine.model"),
    ],
)
def test_bad_fields_are_named(args, named):
    with pytest.raises(AppConfigError, match=named.replace(".", r"\.")):
        load_app_config(args)


def test_serve_run_key_value_strings_are_coerced():
    config = load_app_config(
        {"model": "tiny", "engine.max_num_seqs": "4", "replica.num_cpus": "0.5"}
    )
    assert config.engine.max_num_seqs == 4
    assert config.engine.model == "tiny"
    assert config.replica.num_cpus == 0.5
    assert config.model_name == "tiny"


def test_model_directory_names_the_served_model(tmp_path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    assert load_app_config({"model": str(model_dir)}).model_name == "my-model"
    named = load_app_config({"model": str(model_dir), "served_model_name": "m"})
    assert named.model_name == "m"


def test_deployment_options_follow_the_config():
    config = load_app_config(
        {
            "replica": {"num_cpus": 0.5, "max_ongoing_requests": 3, "max_queued_requests": 5},
            "limits": {"retry_after_s": 7},
        }
    )
    replica = replica_options(config)
    assert replica["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.0}
    assert (replica["max_ongoing_requests"], replica["max_queued_requests"]) == (3, 5)
    assert replica["num_replicas"] == 1
    assert ingress_options(config)["backpressure_config"] == {
        "status_code": 429,
        "retry_after_s": 7,
    }
    scaled = replica_options(
        load_app_config({"replica": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}})
    )
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["max_replicas"] == 3


def test_dev_yaml_is_a_valid_serve_config_with_valid_args():
    raw = yaml.safe_load(DEV_YAML.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    assert schema.http_options.port == 8000
    [application] = schema.applications
    assert application.import_path == "serve_app.app:build_app"
    config = load_app_config(application.args)
    assert config.model == "tiny"
    # It must fit the 2-core dev box: the replica plus the ingress.
    assert config.replica.num_cpus + config.ingress.num_cpus <= 2


def test_serve_limits_derive_from_the_admission_bound_unless_given():
    from serve_app.app import CALL_MARGIN, INGRESS_BURST_FACTOR, batcher_options

    config = load_app_config({"engine": {"max_num_seqs": 16}, "replica": {"num_replicas": 2}})
    assert config.admission_bound == 16 * 2 + 1024
    share = -(-config.admission_bound // 2) + CALL_MARGIN
    replica = replica_options(config)
    assert (replica["max_ongoing_requests"], replica["max_queued_requests"]) == (share, share)
    whole = config.admission_bound + CALL_MARGIN  # one ingress and one batcher replica
    assert ingress_options(config)["max_ongoing_requests"] == whole
    # A burst of several admission bounds waits at the proxy for admission's JSON 429.
    assert ingress_options(config)["max_queued_requests"] == INGRESS_BURST_FACTOR * whole
    assert batcher_options(config)["max_ongoing_requests"] == whole
