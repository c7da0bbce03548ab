"""The README, followed literally on the dev cluster started its way (`make run`; only the
ports differ: see conftest.py).

Every shell and Python block runs as written (a block is skipped only for a reason listed
in SKIPPED, and the test says which); commands use one style (`.venv/bin/...`) and links
stay inside the repository. Then the dev cluster is operated from another terminal as the
README says: Ray's CLI reaches it (`make status`), a changed Batcher `user_config` applies
live through `make deploy`, metrics are on the fixed port, and an application that cannot
start makes `serve run` (and `make deploy`) exit non-zero within a minute with the cause."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from tests.docs.conftest import free_port

if TYPE_CHECKING:
    from conftest import DevCluster

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]

# A substring that picks out exactly one block -> why it is not run here.
SKIPPED = {
    "make test": "`make run` is how the dev_cluster fixture starts the app; `make test` is "
    "the whole suite (CI runs it)",
    "serve_app.proto.generate": "rewrites tracked files; tests/serve_app/test_proto_sync.py "
    "runs the same generation",
    "CONFIG=deployments/dev-tp2.yaml": "a second dev cluster in the foreground; "
    "tests/serve_app/replica/test_tp_replica.py serves TP=2 through Serve and "
    "tests/serve_app/test_tp_deployments.py checks dev-tp2.yaml",
    "gpu-tp2.yaml": "GPU cluster only",
    ".venv/bin/pytest": "runs test suites that `make test` runs",
    "bench.attention_kernels": "GPU only (it skips on CPU)",
    "ray up cluster/": "needs a cloud account; tests/cluster validates every cluster YAML with "
    "Ray's schema and runs the fake multi-node autoscaler",
    "serve_app.preemption --provider aws": "needs a cloud metadata server on a Ray worker "
    "node; tests/serve_app/preemption runs the watcher against a fake one on a 2-node cluster",
    "dashboards.push": "needs a Grafana and its token; tests/dashboards checks generate, "
    "promtool and push against a stand-in server",
    "tests.serve_app.chaos.run_chaos": "the chaos matrix (its own multi-node Ray cluster, "
    "about 2 min); tests/serve_app/chaos/test_spot_chaos.py runs it and checks every row",
    "bench.serve_load": "long benchmark (200 requests at 4/s, about a minute); "
    "tests/bench/test_serve_load.py runs the load generator end to end on a stand-in server",
}
# The README's addresses, and which of the dev cluster's ports stands for each.
ADDRESSES = {
    "127.0.0.1:8000": "http_port",
    "127.0.0.1:9000": "grpc_port",
    "127.0.0.1:8080": "metrics_port",
    "127.0.0.1:8265": "dashboard_port",
}
# Ray's, Serve's and our own commands: outside the venv they are missing or another install.
VENV_COMMANDS = ("python", "python3", "serve", "ray", "pytest", "pip", "ruff")


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def block_id(block: str) -> str:
    first = next(line for line in block.splitlines() if line.strip() and "import" not in line)
    return re.sub(r"\W+", "-", first)[:50].strip("-")


def skip_reason(block: str) -> str | None:
    reasons = [reason for key, reason in SKIPPED.items() if key in block]
    assert len(reasons) <= 1, f"several SKIPPED keys match one block:\n{block}"
    return reasons[0] if reasons else None


def with_test_ports(block: str, request: pytest.FixtureRequest) -> str:
    if not any(address in block for address in ADDRESSES):
        return block
    cluster = request.getfixturevalue("dev_cluster")
    for address, port_name in ADDRESSES.items():
        block = block.replace(address, f"127.0.0.1:{getattr(cluster, port_name)}")
    return block


def run_block(command: list[str], request: pytest.FixtureRequest) -> str:
    cluster = request.getfixturevalue("dev_cluster")  # its env: ports, Ray's temp dir, token
    done = cluster.run(command, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("block", blocks("bash"), ids=block_id)
def test_shell_block_runs(block: str, request: pytest.FixtureRequest) -> None:
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    script = "set -eo pipefail\n" + with_test_ports(block, request)
    run_block(["bash", "-c", script], request)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("block", blocks("python"), ids=block_id)
def test_python_block_runs(block: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    reason = skip_reason(block)
    if reason:
        pytest.skip(reason)
    script = tmp_path / "example.py"  # saved as a script, as a user would (main guard)
    script.write_text(with_test_ports(block, request))
    run_block([sys.executable, str(script)], request)


def test_every_skip_reason_matches_exactly_one_block() -> None:
    every_block = blocks("bash") + blocks("python")
    for key in SKIPPED:
        assert sum(key in block for block in every_block) == 1, key


def test_links_stay_inside_the_repository() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            path = target.split("#", 1)[0]
            assert "://" not in target and not target.startswith("mailto:"), (doc, target)
            if path:
                resolved = (doc.parent / path).resolve()
                assert resolved.is_relative_to(REPO), f"{doc.name} links outside: {target}"
                assert resolved.exists(), f"{doc.name} links to a missing file: {target}"


def test_commands_use_the_venv() -> None:
    """Every command line and inline command starts Python tools from `.venv/bin/`
    (a two-word span such as `serve status` names a command in prose)."""
    text = README.read_text()
    lines = [line for block in blocks("bash") for line in block.splitlines()]
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    lines += [span for span in spans if len(span.split()) > 2]  # a command, not a name
    bare = re.compile(rf"^(?:[A-Z_]+=\S+\s+)*({'|'.join(VENV_COMMANDS)})\s")
    offenders = [line for line in lines if bare.match(line.strip())]
    assert not offenders, f"use .venv/bin/<command>: {offenders}"


def test_make_run_serves_the_dev_config_with_a_fixed_metrics_port() -> None:
    listed = subprocess.run(
        ["make", "-n", "run"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "--metrics-export-port=8080" in listed
    assert "serve_app.preflight" in listed
    assert "serve run deployments/dev.yaml" in listed


FAIL_FAST_S = 60


@pytest.mark.slow
@pytest.mark.ray
def test_make_status_reports_the_running_app(dev_cluster: DevCluster) -> None:
    done = dev_cluster.run(["make", "status"])
    assert done.returncode == 0, done.stderr
    status = yaml.safe_load(done.stdout.split("\n.venv/bin/ray status", 1)[0].split("\n", 1)[1])
    assert status["applications"]["llm"]["status"] == "RUNNING"
    assert "Total Usage" in done.stdout  # `ray status` reached the cluster too


@pytest.mark.slow
@pytest.mark.ray
def test_metrics_are_on_the_fixed_port(dev_cluster: DevCluster) -> None:
    metrics = httpx.get(f"http://127.0.0.1:{dev_cluster.metrics_port}/metrics", timeout=30).text
    assert "ray_serve_app_requests_total" in metrics  # the fixture's warm-up request


def replica_ids(details: dict, deployment: str) -> set[str]:
    replicas = details["applications"]["llm"]["deployments"][deployment]["replicas"]
    return {replica["replica_id"] for replica in replicas}


def batcher_user_config(details: dict) -> dict:
    deployment = details["applications"]["llm"]["deployments"]["Batcher"]
    return deployment["deployment_config"].get("user_config") or {}


@pytest.mark.slow
@pytest.mark.ray
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


@pytest.mark.slow
@pytest.mark.ray
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
    README says for Ray's CLI): non-zero, within a minute, the cause printed as one line
    (before: the last line of a ~20-line traceback)."""
    started = time.monotonic()
    done = dev_cluster.run(
        f"RAY_AUTH_MODE=token .venv/bin/serve run serve_app.app:build_app {argument}",
        timeout=FAIL_FAST_S * 3,
    )
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    assert cause in done.stdout + done.stderr
    assert elapsed < FAIL_FAST_S
    [line] = [line for line in done.stderr.splitlines() if cause in line]
    assert line.startswith("serve run: the application cannot start: ")
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.ray
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


@pytest.mark.slow
@pytest.mark.ray
def test_a_second_make_run_refuses_at_once_and_leaves_the_first_serving(
    dev_cluster: DevCluster,
) -> None:
    """Before: `ray start` failed with Ray's AssertionError, then its `serve run` deployed
    onto the first cluster, and its Ctrl-C deleted the first terminal's app."""
    started = time.monotonic()
    done = dev_cluster.run(["make", "run"], timeout=60)  # the same ports, from the env
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    assert f"port {dev_cluster.ray_port} (RAY_PORT) is in use" in done.stderr
    assert f"port {dev_cluster.http_port} (" in done.stderr  # the config's HTTP port too
    assert "ray start" not in done.stdout  # refused before starting anything
    response = httpx.post(
        f"{dev_cluster.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "still serving", "max_tokens": 4},
        timeout=60,
    )
    assert response.status_code == 200


# ---- what `make run`'s terminal shows (issue 28) -----------------------------------------
READY_WAIT_S = 60
REQUEST_LOG_FILE = "serve_app_requests.jsonl"  # deployments/dev*.yaml's request_log.file


def wait_for_log_line(log: Path, needle: str, timeout_s: float = READY_WAIT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        time.sleep(1)
    pytest.fail(f"no line with {needle!r} in make run's output:\n{log.read_text()[-5000:]}")


@pytest.mark.slow
@pytest.mark.ray
def test_make_run_prints_one_ready_line_with_the_addresses(dev_cluster: DevCluster) -> None:
    line = wait_for_log_line(dev_cluster.log, "ready at http://")
    assert f"ready at http://127.0.0.1:{dev_cluster.http_port}/v1" in line
    assert f"metrics http://127.0.0.1:{dev_cluster.metrics_port}/metrics" in line
    assert f"dashboard http://127.0.0.1:{dev_cluster.dashboard_port}" in line
    assert dev_cluster.log.read_text().count("ready at http://") == 1


@pytest.mark.slow
@pytest.mark.ray
def test_request_logs_go_to_a_file_in_rays_log_dir_not_the_terminal(
    dev_cluster: DevCluster,
) -> None:
    """`make run`'s configs send request lines to Ray's log directory, and Serve's
    per-call access lines are off: the terminal is left with start-up, warnings, errors."""
    marker = f"log-check-{time.monotonic_ns()}"
    response = httpx.post(
        f"{dev_cluster.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "where do logs go", "max_tokens": 2},
        headers={"Idempotency-Key": marker},
        timeout=60,
    )
    assert response.status_code == 200
    logs = Path(dev_cluster.env["RAY_TMPDIR"]) / "ray" / "session_latest" / "logs"
    log_file = logs / REQUEST_LOG_FILE
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and marker not in (
        log_file.read_text() if log_file.exists() else ""
    ):
        time.sleep(0.5)
    assert marker in log_file.read_text(), f"no request line in {log_file}"
    ready = wait_for_log_line(dev_cluster.log, "ready at http://")
    assert f"request logs: {log_file}" in ready  # the line says where they go
    time.sleep(2)  # what Ray forwards to the terminal arrives within a second or so
    console = dev_cluster.log.read_text(errors="replace")
    assert marker not in console
    assert '"route": "/v1/completions"' not in console  # no request JSON at all
    assert "POST /v1/completions 200" not in console  # nor Serve's access lines
    assert "CALL generate_batch OK" not in console


@pytest.mark.slow
@pytest.mark.ray
def test_make_status_with_another_ray_port_says_so_in_one_line(dev_cluster: DevCluster) -> None:
    """`make run RAY_PORT=...` then `make status` without it: before, `serve status` went on
    and `ray status` ended in a GCS-timeout traceback after a minute."""
    wrong_port = free_port()
    env = {**dev_cluster.env, "RAY_PORT": str(wrong_port)}
    started = time.monotonic()
    done = subprocess.run(
        ["make", "status"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    expected = (
        f"make status: no Ray cluster at 127.0.0.1:{wrong_port} (RAY_PORT): start `make run` "
        "first, or pass the same RAY_PORT=... you gave make run"
    )
    assert expected in done.stderr.splitlines()
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_the_preemption_watcher_runs_as_documented_on_the_dev_cluster(
    dev_cluster: DevCluster, tmp_path: Path
) -> None:
    """The README's command, with no RAY_AUTH_MODE (it was an undocumented must): the watcher
    reaches the cluster and polls; no notice comes, so it drains nothing, and SIGTERM ends it
    (exit 1: stopped before any drain)."""
    assert "RAY_AUTH_MODE" not in dev_cluster.env
    command = [
        ".venv/bin/python", "-m", "serve_app.preemption", "--provider", "file",
        "--trigger-file", str(tmp_path / "never"), "--metrics-port", "0",
        "--poll-interval-s", "0.5", "--log-level", "DEBUG",
    ]  # fmt: skip
    watcher = subprocess.Popen(
        command, cwd=REPO, env=dev_cluster.env, stderr=subprocess.PIPE, text=True
    )
    try:
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = watcher.stderr.readline()
            if not line:
                break  # it exited
            seen.append(line)
            if "no notice from" in line:
                break
        assert any("no notice from" in line for line in seen), "".join(seen)
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)
    assert watcher.returncode == 1
