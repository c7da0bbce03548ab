"""The README, followed literally on the dev cluster started its way (`make run`; only the
ports differ: see conftest.py).

Every shell and Python block runs as written (a block is skipped only for a reason listed
in SKIPPED, and the test says which); commands use one style (`.venv/bin/...`) and links
stay inside the repository. Then the dev cluster is operated from another terminal as the
README says: Ray's CLI reaches it (`make status`), a changed Batcher `user_config` applies
live through `make deploy` (a mistyped one is refused there, and deployed past the preflight
it leaves the batcher serving its old policy), metrics are on the fixed port, the default
config absorbs a burst of 128 streams, and an application that cannot start makes `serve
run` (and `make deploy`) exit non-zero within a minute with the cause."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import yaml

from serve_app.batcher.policy import BatchPolicyConfig
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


@pytest.mark.slow
@pytest.mark.ray
def test_a_grpc_application_name_that_is_not_served_is_not_found(dev_cluster: DevCluster) -> None:
    """`make run`'s cluster runs one application, and Serve's gRPC proxy then routes every
    call to it whatever `application` it names: the ingress itself refuses another name
    (before: a misspelt name was served)."""
    import grpc

    from serve_app.proto import llm_pb2, llm_pb2_grpc

    request = llm_pb2.GenerateRequest(prompt="x", max_tokens=2)
    with grpc.insecure_channel(f"127.0.0.1:{dev_cluster.grpc_port}") as channel:
        stub = llm_pb2_grpc.LLMStub(channel)
        assert stub.Generate(request, metadata=[("application", "llm")], timeout=60).token_ids
        for call in (stub.Generate, stub.GenerateStream):
            with pytest.raises(grpc.RpcError) as refused:
                list_or_reply = call(request, metadata=[("application", "lmm")], timeout=60)
                if call is stub.GenerateStream:
                    list(list_or_reply)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert "must be 'llm'" in refused.value.details()


BURST_STREAMS = 128


async def one_burst_stream(client: httpx.AsyncClient, url: str, index: int) -> tuple[int, list]:
    body = {
        "model": "tiny",
        "prompt": f"burst {index} " * (1 + index % 8),
        "max_tokens": 8 + index % 9,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        if response.status_code != 200:
            return response.status_code, [(await response.aread()).decode()]
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    return 200, events


@pytest.mark.slow
@pytest.mark.ray
def test_the_dev_config_absorbs_a_burst_of_128_streams(dev_cluster: DevCluster) -> None:
    """The README's claim for the default config: 128 concurrent streams against `make run`'s
    app (dev-grpc.yaml serves dev.yaml's application unchanged) all complete, 0 errors."""
    [dev_app] = yaml.safe_load((REPO / "deployments" / "dev.yaml").read_text())["applications"]
    [served] = yaml.safe_load(dev_cluster.config.read_text())["applications"]
    assert served == dev_app
    assert "admission" not in dev_app["args"]  # the defaults are what is under test

    async def burst() -> list[tuple[int, list]]:
        limits = httpx.Limits(max_connections=BURST_STREAMS)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            streams = (
                one_burst_stream(client, dev_cluster.base_url, index)
                for index in range(BURST_STREAMS)
            )
            return await asyncio.gather(*streams)

    results = asyncio.run(burst())
    assert [(status, events[-1:]) for status, events in results if status != 200] == []
    for index, (_, events) in enumerate(results):
        assert events[-1] == "[DONE]", events[-2:]
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 8 + index % 9


def replica_ids(details: dict, deployment: str) -> set[str]:
    replicas = details["applications"]["llm"]["deployments"][deployment]["replicas"]
    return {replica["replica_id"] for replica in replicas}


def assert_still_serving(cluster: DevCluster) -> None:
    """A completion comes back, with no API key (the dev cluster has none)."""
    status = complete(cluster)
    assert status == 200, status


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
    assert_still_serving(dev_cluster)


# dev.yaml's batch policy with `max_wait_ms` mistyped, and other knobs changed beside it.
TYPO_POLICY = {"target_ttft_ms": 150, "max_batch_size": 7, "max_wiat_ms": 3}
TYPO_CAUSE = (
    "deployment 'Batcher' user_config: unknown field 'max_wiat_ms' "
    "(allowed: max_batch_size, max_wait_ms, smoothing, target_ttft_ms)"
)
SERVING_CHECK_S = 8  # requests sent after a bad deploy, for this long


def with_batcher_policy(cluster: DevCluster, user_config: dict, path: Path) -> Path:
    """The cluster's Serve config with the Batcher's user_config overridden, saved at path."""
    config = yaml.safe_load(cluster.config.read_text())
    config["applications"][0]["deployments"] = [{"name": "Batcher", "user_config": user_config}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def serve_deploy(cluster: DevCluster, config: Path) -> None:
    """Plain `serve deploy`, without `make deploy`'s preflight."""
    done = cluster.run(f"RAY_AUTH_MODE=token .venv/bin/serve deploy {config}")
    assert done.returncode == 0, done.stdout + done.stderr


def wait_for_batcher_policy(
    cluster: DevCluster, user_config: dict, timeout_s: float, running: bool = True
) -> dict:
    """Serve's details once the Batcher's user_config is `user_config` (Serve's target) and,
    if `running`, the app RUNNING."""
    deadline = time.monotonic() + timeout_s
    while True:
        details = cluster.serve_details()
        application = details["applications"]["llm"]
        if batcher_user_config(details) == user_config and (
            application["status"] == "RUNNING" or not running
        ):
            return details
        assert time.monotonic() < deadline, application
        time.sleep(1)


@contextmanager
def restoring_batcher_policy(cluster: DevCluster, tmp_path: Path) -> Iterator[dict]:
    """The Batcher's user_config before the block (yielded), deployed again after it and
    serving: the module's other tests share the cluster."""
    before = batcher_user_config(cluster.serve_details())
    try:
        yield before
    finally:
        if batcher_user_config(cluster.serve_details()) != before:
            serve_deploy(cluster, with_batcher_policy(cluster, before, tmp_path / "restore.yaml"))
            wait_for_batcher_policy(cluster, before, timeout_s=180)
        assert complete(cluster) == 200


def complete(cluster: DevCluster) -> int | str:
    """One completion's HTTP status (or the error that stood for one)."""
    body = {"model": "tiny", "prompt": "still serving", "max_tokens": 4}
    try:
        return httpx.post(f"{cluster.base_url}/v1/completions", json=body, timeout=60).status_code
    except httpx.HTTPError as error:
        return repr(error)


def statuses_for(cluster: DevCluster, seconds: float) -> list[int | str]:
    deadline = time.monotonic() + seconds
    statuses = []
    while time.monotonic() < deadline:
        statuses.append(complete(cluster))
    return statuses


BATCHER_STATS = (
    "import json, ray; from ray import serve; ray.init(logging_level='ERROR'); "
    "print(json.dumps(serve.get_deployment_handle('Batcher', app_name='llm')"
    ".stats.remote().result(timeout_s=60)))"
)


def batcher_stats(cluster: DevCluster) -> dict:
    """Batcher.stats() of the running batcher (a driver on the cluster asks it)."""
    done = cluster.run(["env", "RAY_AUTH_MODE=token", ".venv/bin/python", "-c", BATCHER_STATS])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.ray
def test_make_deploy_refuses_a_batch_policy_typo_and_the_app_serves_on(
    dev_cluster: DevCluster, tmp_path: Path
) -> None:
    """Before: the preflight checked the args only, `serve deploy` sent the typo, and the
    Batcher was left with no replica (requests failed)."""
    with restoring_batcher_policy(dev_cluster, tmp_path) as before:
        typo = with_batcher_policy(dev_cluster, TYPO_POLICY, tmp_path / "typo.yaml")
        done = dev_cluster.run(["make", "deploy", f"CONFIG={typo}"])
        assert done.returncode != 0, done.stdout
        assert f"preflight: {typo} application 'llm' {TYPO_CAUSE}" in done.stderr.splitlines()
        assert "serve deploy" not in done.stdout  # refused before anything was sent
        assert set(statuses_for(dev_cluster, seconds=3)) == {200}
        assert batcher_user_config(dev_cluster.serve_details()) == before


@pytest.mark.slow
@pytest.mark.ray
def test_a_batch_policy_typo_past_the_preflight_leaves_the_batcher_serving_its_old_policy(
    dev_cluster: DevCluster, tmp_path: Path
) -> None:
    """`serve deploy` of the typo itself: Serve hands it to the live Batcher's reconfigure,
    which keeps its policy and logs why, instead of failing (before: Serve stopped the
    Batcher replica for the failure and requests timed out)."""
    with restoring_batcher_policy(dev_cluster, tmp_path) as before:
        batchers = replica_ids(dev_cluster.serve_details(), "Batcher")
        old_policy = BatchPolicyConfig.from_user_config(before).to_dict()
        serve_deploy(
            dev_cluster, with_batcher_policy(dev_cluster, TYPO_POLICY, tmp_path / "t.yaml")
        )
        wait_for_batcher_policy(dev_cluster, TYPO_POLICY, timeout_s=60, running=False)

        statuses = statuses_for(dev_cluster, seconds=SERVING_CHECK_S)
        assert set(statuses) == {200}, statuses
        details = wait_for_batcher_policy(dev_cluster, TYPO_POLICY, timeout_s=30)
        assert replica_ids(details, "Batcher") == batchers  # the same replica, not restarted
        stats = batcher_stats(dev_cluster)
        assert stats["policy"] == old_policy
        assert stats["rejected_user_config"].startswith("unknown field 'max_wiat_ms' (allowed:")
        # The replica's error, in `make run`'s terminal: it names the field.
        logged = [line for line in dev_cluster.log.read_text().splitlines() if "rejected" in line]
        assert any("Batcher user_config" in line and "'max_wiat_ms'" in line for line in logged)


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
def test_make_deploy_refuses_api_keys_set_only_in_its_own_shell(dev_cluster: DevCluster):
    """The README's "Where API keys are read": before, `SERVE_APP_API_KEYS=... make deploy`
    deployed without keys (the ingress reads the cluster's environment), and said nothing."""
    before = dev_cluster.serve_details()
    done = dev_cluster.run(
        f"SERVE_APP_API_KEYS=sk-only-here make deploy CONFIG={dev_cluster.config}"
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert (
        "SERVE_APP_API_KEYS is set in this shell, but the serving processes do not see it"
        in done.stderr
    )
    assert "set it in the environment of `make run`" in done.stderr
    assert "sk-only-here" not in done.stdout + done.stderr
    assert "preflight: application 'llm': auth OFF (no API key in env SERVE_APP_API_KEYS)" in (
        done.stdout
    )
    # Nothing was deployed: the same replicas serve as before, still without a key.
    after = dev_cluster.serve_details()
    assert after["applications"]["llm"]["status"] == "RUNNING"
    assert replica_ids(after, "OpenAIIngress") == replica_ids(before, "OpenAIIngress")
    assert_still_serving(dev_cluster)


@pytest.mark.slow
@pytest.mark.ray
def test_the_preflight_reports_the_keys_the_serving_side_will_have(
    dev_cluster: DevCluster, tmp_path: Path
):
    """Keys from a file named in the config, and from the application's runtime_env
    env_vars, count; neither the keys nor an EXPOSED warning (gRPC is on) are printed."""
    keys = tmp_path / "keys"
    keys.write_text("# two keys\nsk-file-1\nsk-file-2\n")
    config = yaml.safe_load(dev_cluster.config.read_text())
    [application] = config["applications"]
    application["args"]["auth"] = {"api_keys_env": None, "api_keys_file": str(keys)}
    from_env = {**application, "name": "llm-env", "route_prefix": "/env", "args": {}}
    from_env["runtime_env"] = {"env_vars": {"SERVE_APP_API_KEYS": "sk-e1,sk-e2,sk-e3"}}
    config["applications"].append(from_env)
    checked = tmp_path / "keys.yaml"
    checked.write_text(yaml.safe_dump(config, sort_keys=False))

    # The shell's value is the one the application's runtime_env gives: not refused.
    done = dev_cluster.run(
        "SERVE_APP_API_KEYS=sk-e1,sk-e2,sk-e3 RAY_AUTH_MODE=token "
        f".venv/bin/python -m serve_app.preflight {checked}"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"preflight: application 'llm': auth ON (2 keys from file {keys})" in done.stdout
    assert (
        "preflight: application 'llm-env': auth ON (3 keys from env SERVE_APP_API_KEYS)"
        in done.stdout
    )
    assert "sk-" not in done.stdout + done.stderr
    assert "EXPOSED" not in done.stderr


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
    assert_still_serving(dev_cluster)


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
    response = httpx.post(
        f"{dev_cluster.base_url}/v1/completions",
        json={"model": "tiny", "prompt": "where do logs go", "max_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200
    marker = response.headers["x-request-id"]  # the line's request_id
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
