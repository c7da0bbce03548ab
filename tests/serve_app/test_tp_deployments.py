"""Tensor-parallel deployment config: dev-tp2.yaml and gpu-tp2.yaml are valid Serve configs
whose args pass AppConfig, build_app derives one placement-group bundle per rank, and
impossible rank resources fail at start-up by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import replica_options
from serve_app.config import AppConfig, AppConfigError, load_app_config
from serve_app.engine.errors import TensorParallelError
from serve_app.replica.ray_executor import placement_group_bundles

DEPLOYMENTS = Path(__file__).parents[2] / "deployments"


def load_deployment(name: str) -> tuple[ServeDeploySchema, AppConfig]:
    raw = yaml.safe_load((DEPLOYMENTS / name).read_text())
    schema = ServeDeploySchema.model_validate(raw)
    [application] = schema.applications
    assert application.import_path == "serve_app.app:build_app"
    return schema, load_app_config(application.args)


def test_dev_tp2_yaml_runs_two_cpu_ranks_on_the_dev_box():
    schema, config = load_deployment("dev-tp2.yaml")
    dev_schema, _ = load_deployment("dev.yaml")
    assert schema.http_options == dev_schema.http_options  # the same shape as dev.yaml
    assert schema.proxy_location == dev_schema.proxy_location
    assert schema.grpc_options == dev_schema.grpc_options
    assert config.model == "tiny"
    assert config.engine.tensor_parallel_size == 2
    options = replica_options(config)
    assert options["placement_group_strategy"] == "STRICT_PACK"
    assert options["placement_group_bundles"] == [{"CPU": 0.5}, {"CPU": 0.5}]
    # Both ranks and the ingress fit the 2-core box.
    assert 2 * config.replica.num_cpus + config.ingress.num_cpus <= 2


def test_gpu_tp2_yaml_takes_one_gpu_per_rank_with_triton_attention():
    schema, config = load_deployment("gpu-tp2.yaml")
    assert schema.http_options.port == 8000
    assert schema.grpc_options.port == 9000
    assert config.model == "/models/Qwen2.5-7B-Instruct"
    assert config.engine.tensor_parallel_size == 2
    assert config.engine.dtype in ("float16", "bfloat16")
    assert config.engine.attention_backend == "triton"
    assert config.engine.device == "cuda"
    assert config.replica.autoscaling is not None
    options = replica_options(config)
    assert options["placement_group_bundles"] == [{"CPU": 2, "GPU": 1}] * 2
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}  # fits bundle 0
    assert "num_replicas" not in options


def test_a_typo_in_the_tp_yaml_args_fails_by_name():
    raw = yaml.safe_load((DEPLOYMENTS / "gpu-tp2.yaml").read_text())
    args = raw["applications"][0]["args"]
    args["engine"]["tensor_paralel_size"] = 2
    with pytest.raises(AppConfigError, match="tensor_paralel_size"):
        load_app_config(args)


def test_tp1_has_no_placement_group():
    options = replica_options(load_app_config({}))
    assert "placement_group_bundles" not in options
    assert "placement_group_strategy" not in options


@pytest.mark.parametrize(
    ("replica", "engine", "message"),
    [
        ({"num_gpus": 0.5}, {}, "replica.num_gpus must be 0"),
        ({"num_gpus": 2}, {}, "replica.num_gpus must be 0"),
        ({"num_cpus": 0}, {}, "replica.num_cpus must be > 0"),
        ({}, {"device": "cuda"}, "set replica.num_gpus to 1"),
    ],
)
def test_impossible_rank_resources_fail_by_name(replica: dict, engine: dict, message: str):
    args = {"engine": {"tensor_parallel_size": 2, **engine}, "replica": replica}
    with pytest.raises(AppConfigError, match=message):
        load_app_config(args)


def test_executor_outside_a_placement_group_says_what_is_missing():
    with pytest.raises(TensorParallelError, match="placement group with one bundle per rank"):
        placement_group_bundles(None, 2)
