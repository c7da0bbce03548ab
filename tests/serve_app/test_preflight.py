"""Start-up checks: each way an application cannot start is found before deploying, with
a message that names the cause and the knob to change."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_app.cluster_resources import ClusterResources
from serve_app.config import load_app_config
from serve_app.engine.model_path import resolve_model_dir
from serve_app.preflight import (
    PreflightError,
    app_need,
    check_app,
    check_config_file,
    model_problems,
    resource_problems,
)
from tests.serve_app.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
TWO_CPUS = ClusterResources(where="a 2-CPU box", nodes=[{"CPU": 2.0}])


def test_the_dev_app_passes_on_the_dev_box():
    check_app(load_app_config({"replica": {"num_cpus": 1}}), TWO_CPUS)


def test_a_missing_model_directory_is_named():
    [problem] = model_problems(load_app_config({"model": "/no/such/dir"}))
    assert "'/no/such/dir' is neither a preset" in problem


def copy_of_tiny(tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(resolve_model_dir("tiny"), model_dir)
    return model_dir


def test_a_model_directory_without_weights_or_tokenizer_is_named(tmp_path: Path):
    model_dir = copy_of_tiny(tmp_path)
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    [problem] = model_problems(load_app_config({"model": str(model_dir)}))
    assert "has no *.safetensors weights" in problem
    model_dir = copy_of_tiny(tmp_path / "again")
    (model_dir / "tokenizer.json").unlink()
    [problem] = model_problems(load_app_config({"model": str(model_dir)}))
    assert "has no tokenizer" in problem


def test_an_unsupported_architecture_is_named(tmp_path: Path):
    model_dir = copy_of_tiny(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    config["model_type"] = "gpt2"
    (model_dir / "config.json").write_text(json.dumps(config))
    [problem] = model_problems(load_app_config({"model": str(model_dir)}))
    assert "GPT2LMHeadModel" in problem


def test_a_tensor_parallel_size_the_model_cannot_split_is_named():
    [problem] = model_problems(load_app_config({"engine": {"tensor_parallel_size": 3}}))
    assert "tensor_parallel_size 3" in problem
    assert "num_attention_heads (4) is not divisible by 3" in problem
    assert model_problems(load_app_config({"engine": {"tensor_parallel_size": 2}})) == []


def test_a_replica_larger_than_any_node_is_named():
    config = load_app_config({"engine": {"tensor_parallel_size": 2}, "replica": {"num_cpus": 2}})
    [problem] = resource_problems(config, TWO_CPUS)
    assert "one model replica needs {CPU: 4.0} on one node" in problem
    assert "largest: {CPU: 2.0}" in problem
    with pytest.raises(PreflightError, match=re.escape("needs {CPU: 4.0}")):
        check_app(config, TWO_CPUS)


def test_a_gpu_replica_on_a_cpu_cluster_is_named():
    config = load_app_config({"replica": {"num_gpus": 1}})
    [problem] = resource_problems(config, TWO_CPUS)
    assert "{CPU: 1.0, GPU: 1.0}" in problem


def test_an_autoscaler_node_type_counts_as_room():
    config = load_app_config({"replica": {"num_cpus": 2, "num_gpus": 1}})
    growing = ClusterResources("a cluster", nodes=[{"CPU": 4.0}], node_types=[{"CPU": 8, "GPU": 1}])
    assert resource_problems(config, growing) == []


def test_the_whole_app_must_fit_a_cluster_that_cannot_grow():
    config = load_app_config({"replica": {"num_replicas": 3, "num_cpus": 1}})
    assert app_need(config) == {"CPU": 3.5, "GPU": 0.0}
    [problem] = resource_problems(config, TWO_CPUS)
    assert "the application needs {CPU: 3.5} in all" in problem
    spread = ClusterResources("two nodes", nodes=[{"CPU": 2.0}, {"CPU": 2.0}])
    assert resource_problems(config, spread) == []


def test_config_files_in_deployments_pass_on_their_machines():
    deployments = Path(__file__).parents[2] / "deployments"
    for name in ("dev.yaml", "dev-grpc.yaml", "dev-tp2.yaml"):
        assert check_config_file(deployments / name, TWO_CPUS) == [], name


def test_a_config_file_names_the_application_and_its_problem(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "applications:\n  - name: llm\n    import_path: serve_app.app:build_app\n"
        "    args: {model: /no/such/dir}\n"
    )
    [problem] = check_config_file(bad, TWO_CPUS)
    assert problem.startswith(f"{bad} application 'llm': model:")


def test_make_deploy_without_a_cluster_says_start_make_run_within_10_s():
    """Before: `make deploy` (preflight without --wait-s) went into ray.init, which retried
    an address where nothing listens for minutes."""
    port = free_port()  # nothing listens there
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.preflight", str(REPO / "deployments" / "dev.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"no Ray cluster at 127.0.0.1:{port}: start `make run` first" in done.stderr
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "No such file or directory"), ("applications: [", "not YAML (")],
    ids=["missing", "not-yaml"],
)
def test_an_unreadable_config_file_is_one_line_naming_it(tmp_path, monkeypatch, content, why):
    """Before: the ~20-line traceback of a FileNotFoundError or a YAML ScannerError."""
    config = tmp_path / "dev.yaml"
    if content is not None:
        config.write_text(content)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SERVE_APP_DEBUG")}
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.preflight", str(config)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith(f"preflight: CONFIG {config}: {why}")
    assert line.endswith("pass a Serve config file, e.g. CONFIG=deployments/dev.yaml")
    debug = subprocess.run(
        [sys.executable, "-m", "serve_app.preflight", str(config)],
        cwd=REPO, env={**env, "SERVE_APP_DEBUG": "1"}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert debug.stderr.startswith("Traceback") and debug.stderr.splitlines()[-1] == line
