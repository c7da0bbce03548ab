"""The dev cluster of `make run`, operated from another terminal as the README says: Ray's
CLI reaches it (`make status`), a changed Batcher `user_config` applies live through
`make deploy`, metrics are on the fixed port, and an application that cannot start makes
`serve run` (and `make deploy`) exit non-zero within a minute, printing the cause."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

if TYPE_CHECKING:
    from conftest import DevCluster

pytestmark = [pytest.mark.slow, pytest.mark.ray]

FAIL_FAST_S = 60


def test_make_status_reports_the_running_app(dev_cluster: DevCluster) -> None:
    done = dev_cluster.run(["make", "status"])
    assert done.returncode == 0, done.stderr
    status = yaml.safe_load(done.stdout.split("\n.venv/bin/ray status", 1)[0].split("\n", 1)[1])
    assert status["applications"]["llm"]["status"] == "RUNNING"
    assert "Total Usage" in done.stdout  # `ray status` reached the cluster too


def test_metrics_are_on_the_fixed_port(dev_cluster: DevCluster) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{dev_cluster.metrics_port}/metrics", timeout=30).text
    assert "ray_serve_app_requests_total" in metrics  # the fixture's warm-up request


def replica_ids(details: dict, deployment: str) -> set[str]:
    replicas = details["applications"]["llm"]["deployments"][deployment]["replicas"]
    return {replica["replica_id"] for replica in replicas}


def batcher_user_config(details: dict) -> dict:
    deployment = details["applications"]["llm"]["deployments"]["Batcher"]
    return deployment["deployment_config"].get("user_config") or {}


def test_make_deploy_changes_the_batch_policy_live(dev_cluster: DevCluster, tmp_path: Path):
    before = dev_cluster.serve_details()
    config = yaml.safe_load(dev_cluster.config.read_text())
    [application] = config["applications"]
    new_policy = {"target_ttft_ms": 150, "max_batch_size": 7, "max_wait_ms": 3}
    application["deployments"] = [{"name": "Batcher", "user_config": new_policy}]
    changed = tmp_path / "dev.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))

    done = dev_cluster.run(["make", "deploy", f"CONFIG={changed}"])
    assert done.returncode == 0, done.stdout + done.stderr

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        after = dev_cluster.serve_details()
        if (
            batcher_user_config(after) == new_policy
            and after["applications"]["llm"]["status"] == "RUNNING"
        ):
            break
        time.sleep(1)
    assert batcher_user_config(after) == new_policy
    # Reconfigured in place: the same batcher and model replicas, nothing restarted.
    assert replica_ids(after, "Batcher") == replica_ids(before, "Batcher")
    assert replica_ids(after, "ModelReplica") == replica_ids(before, "ModelReplica")
    response = httpx.post(
        f"{dev_cluster.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "still serving", "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("argument", "cause"),
    [
        ("model=/no/such/dir", "model '/no/such/dir' is neither a preset"),
        ("engine.tensor_parallel_size=3", "num_attention_heads (4) is not divisible by 3"),
        ("replica.num_cpus=64", "one model replica needs {CPU: 64.0} on one node"),
    ],
    ids=["bad-model-path", "unsplittable-tp-size", "unsatisfiable-resources"],
)
def test_serve_run_fails_fast_with_the_cause(
    dev_cluster: DevCluster, argument: str, cause: str
) -> None:
    """The README's import-path form against the dev cluster (RAY_AUTH_MODE=token, as the
    README says for Ray's CLI): non-zero, within a minute, the cause printed."""
    started = time.monotonic()
    done = dev_cluster.run(
        f"RAY_AUTH_MODE=token .venv/bin/serve run serve_app.app:build_app {argument}",
        timeout=FAIL_FAST_S * 3,
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert cause in done.stdout + done.stderr
    assert elapsed < FAIL_FAST_S


def test_make_deploy_of_a_config_that_cannot_start_fails_fast(
    dev_cluster: DevCluster, tmp_path: Path
) -> None:
    """The config-file form: `make run` and `make deploy` check the file first."""
    config = yaml.safe_load(dev_cluster.config.read_text())
    config["applications"][0]["args"]["engine"]["tensor_parallel_size"] = 2
    config["applications"][0]["args"]["replica"] = {"num_cpus": 8}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    done = dev_cluster.run(["make", "deploy", f"CONFIG={bad}"], timeout=FAIL_FAST_S * 3)
    assert done.returncode != 0
    assert "one model replica needs {CPU: 16.0} on one node" in done.stderr
    assert time.monotonic() - started < FAIL_FAST_S
    assert dev_cluster.serve_details()["applications"]["llm"]["status"] == "RUNNING"
