"""Start-up checks: what build_app can tell is wrong before Serve deploys anything.

Without them a deployment that cannot work fails late or never: a missing model directory
in a replica restart loop, a model that does not split over the tensor-parallel size inside
every replica, a placement group no node can hold by waiting forever. Here each fails at
once with its cause: `serve run serve_app.app:build_app ...` exits non-zero (build_app runs
in the CLI's process), and a Serve config file fails through `python -m serve_app.preflight
CONFIG.yaml`, which `make run` and `make deploy` run first (for a config file, build_app
runs on the cluster, where a failure marks the application DEPLOY_FAILED but `serve run`
keeps waiting). It also reports the API keys each application will have, resolved where
the ingress resolves them (serve_app/auth_state.py), and refuses keys set only in its own
shell, which the serving processes would never see.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from serve_app.auth_state import serving_auth_problems
from serve_app.cli_errors import report
from serve_app.cluster_resources import ClusterResources, Resources, current_cluster
from serve_app.config import AppConfig, AppConfigError, load_app_config
from serve_app.deploy_overrides import override_problems
from serve_app.dev_ports import ServeConfigFileError, answers, read_serve_config
from serve_app.engine.config import ConfigError
from serve_app.engine.model_files import read_architecture, safetensors_files
from serve_app.engine.model_path import resolve_model_dir
from serve_app.engine.models.architecture import UnsupportedModelError
from serve_app.engine.parallel.sizes import check_tensor_parallel_sizes
from serve_app.exposure import warn_if_exposed

IMPORT_PATH = "serve_app.app:build_app"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class PreflightError(ValueError):
    """The application cannot start as configured; the message lists every cause."""


def check_app(config: AppConfig, cluster: ClusterResources | None = None) -> None:
    """Raise PreflightError naming every problem; warn when a port is exposed without keys."""
    problems = app_problems(config, cluster or current_cluster())
    if problems:
        raise PreflightError("the application cannot start: " + "; ".join(problems))
    warn_if_exposed(config.auth)


def app_problems(config: AppConfig, cluster: ClusterResources) -> list[str]:
    return model_problems(config) + resource_problems(config, cluster)


def model_problems(config: AppConfig) -> list[str]:
    """The model directory is there, readable, supported, and splits over the TP size."""
    try:
        model_dir = resolve_model_dir(config.model)
        architecture = read_architecture(model_dir)
        safetensors_files(model_dir)
    except (OSError, json.JSONDecodeError, UnsupportedModelError, KeyError) as error:
        return [f"model: {error}"]
    problems = []
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"model: {model_dir} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    try:
        check_tensor_parallel_sizes(architecture, config.engine.tensor_parallel_size)
    except ConfigError as error:
        problems.append(str(error))  # it names engine.tensor_parallel_size
    return problems


def replica_need(config: AppConfig) -> Resources:
    """What one model replica takes on one node: a STRICT_PACK group of one bundle of
    replica.num_cpus / num_gpus per tensor-parallel rank (one bundle with TP = 1)."""
    ranks = config.engine.tensor_parallel_size
    return {"CPU": config.replica.num_cpus * ranks, "GPU": config.replica.num_gpus * ranks}


def app_need(config: AppConfig) -> Resources:
    """The whole application at its smallest scale: ingress, batcher and model replicas."""
    replicas = config.replica.num_replicas
    if config.replica.autoscaling is not None:
        replicas = config.replica.autoscaling.min_replicas
    cpus = config.ingress.num_cpus * config.ingress.num_replicas
    if config.batcher.enabled:
        cpus += config.batcher.num_cpus * config.batcher.num_replicas
    replica = replica_need(config)
    return {"CPU": cpus + replica["CPU"] * replicas, "GPU": replica["GPU"] * replicas}


def resource_problems(config: AppConfig, cluster: ClusterResources) -> list[str]:
    need = replica_need(config)
    if not cluster.fits_one_node(need):
        return [
            f"resources: one model replica needs {_show(need)} on one node "
            f"(engine.tensor_parallel_size {config.engine.tensor_parallel_size} x "
            f"replica.num_cpus {config.replica.num_cpus} / replica.num_gpus "
            f"{config.replica.num_gpus}), but no node of {cluster.where} has that "
            f"(largest: {_show(cluster.largest_node())}); lower replica.num_cpus, "
            "replica.num_gpus or engine.tensor_parallel_size"
        ]
    total, app = cluster.total(), app_need(config)
    short = {name: amount for name, amount in app.items() if amount > total.get(name, 0.0)}
    if short and not cluster.can_grow:
        return [
            f"resources: the application needs {_show(app)} in all (ingress, batcher and "
            f"replica.num_replicas / autoscaling.min_replicas model replicas), but "
            f"{cluster.where} has {_show(total)}"
        ]
    return []


def _show(resources: Resources) -> str:
    shown = {name: round(amount, 2) for name, amount in resources.items() if amount > 0}
    return json.dumps(shown or {"CPU": 0}).replace('"', "")


def serve_app_applications(
    serve_config: dict,
) -> list[tuple[str, dict, AppConfig | AppConfigError]]:
    """Each serve_app application of a Serve config: its name, its entry in the config, and
    its args loaded as an AppConfig (or the error saying why they cannot be)."""
    applications = []
    for application in serve_config.get("applications", []):
        if application.get("import_path") != IMPORT_PATH:
            continue
        try:
            loaded: AppConfig | AppConfigError = load_app_config(application.get("args"))
        except AppConfigError as error:
            loaded = error
        applications.append((application.get("name", "default"), application, loaded))
    return applications


def check_config_file(path: Path, cluster: ClusterResources) -> list[str]:
    """The problems of every serve_app application in a Serve config file."""
    problems = []
    for name, application, config in serve_app_applications(read_serve_config(path)):
        problems += [f"{path} application {name!r} {p}" for p in override_problems(application)]
        if isinstance(config, AppConfigError):
            problems.append(f"{path} application {name!r}: {config}")
            continue
        problems += [f"{path} application {name!r}: {p}" for p in app_problems(config, cluster)]
    return problems


def auth_problems(path: Path) -> list[str]:
    """Each serve_app application's API keys as its serving processes will have them
    (serve_app/auth_state.py): printed, with the exposure warning; the problems. An
    application whose args do not load is left to check_config_file."""
    serve_config = read_serve_config(path)
    applications = [
        (name, config, (application.get("runtime_env") or {}).get("env_vars") or {})
        for name, application, config in serve_app_applications(serve_config)
        if isinstance(config, AppConfig)
    ]
    return serving_auth_problems(path, serve_config, applications)


def wait_for_cluster(wait_s: float) -> ClusterResources:
    """The cluster at RAY_ADDRESS (or this machine) once its GCS port answers. `make run`
    waits `wait_s` for the cluster it has just started; `make deploy` (wait_s 0) probes
    once: `ray.init` on an address where nothing listens retries for minutes."""
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "auto":
        host, _, port = address.rpartition(":")
        deadline = time.monotonic() + wait_s
        while not answers(host, int(port), timeout_s=2):
            if time.monotonic() >= deadline:
                waited = f" after {wait_s:.0f} s" if wait_s > 0 else ""
                raise ConnectionError(
                    f"no Ray cluster at {address}{waited}: start `make run` first "
                    "(or set RAY_ADDRESS / RAY_PORT to the cluster's GCS address)"
                )
            time.sleep(0.5)
    return current_cluster()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.preflight",
        description="Check a Serve config's serve_app applications against the model "
        "files and the Ray cluster at RAY_ADDRESS before `serve run` / `serve deploy`.",
    )
    parser.add_argument("config", type=Path, help="a Serve config file")
    parser.add_argument(
        "--wait-s", type=float, default=0, help="wait this long for a starting cluster"
    )
    args = parser.parse_args(argv)
    # Each cause as one line (serve_app/cli_errors.py), never the traceback it ends.
    try:
        cluster = wait_for_cluster(args.wait_s)
        problems = check_config_file(args.config, cluster) + auth_problems(args.config)
    except (ConnectionError, ServeConfigFileError) as error:
        return report("preflight", error)
    for problem in problems:
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
