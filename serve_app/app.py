"""build_app: the import path Serve runs (`serve run deployments/dev.yaml`, or
`serve run serve_app.app:build_app model=/path/to/hf_dir replica.num_cpus=2`).

The graph is ingress -> micro-batcher -> model replica, or ingress -> model replica with
`batcher.enabled=false` (`token_source` is the one switch). Every deployment option
(replicas or autoscaling, resources, admission limits, health-check and shutdown timeouts)
is computed here from the validated AppConfig; the deployment classes themselves carry none.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from serve_app.autoscaling import autoscaling_config
from serve_app.batcher.deployment import Batcher
from serve_app.cli_errors import one_line_on_exit
from serve_app.config import AppConfig, AppConfigError, load_app_config
from serve_app.deployment_names import BATCHER_NAME, INGRESS_NAME, REPLICA_NAME
from serve_app.ingress.http import OpenAIIngress
from serve_app.placement import with_frontend_placement, with_replica_placement
from serve_app.preflight import PreflightError, check_app
from serve_app.replica.deployment import ModelReplica
from serve_app.replica.router import DrainAwareRouter


def build_app(args: dict[str, Any] | None = None) -> Application:
    # `serve run serve_app.app:build_app ...` calls this in its own process and lets what it
    # raises end that process: the cause as one line, not the traceback above it.
    one_line_on_exit("serve run", AppConfigError, PreflightError)
    config = load_app_config(args)
    check_app(config)  # model, TP split and resources: fail here, not in the replicas
    # On a cluster (`placement.enabled`) each deployment is also told which nodes to use.
    replica_opts = with_replica_placement(
        config, with_serve_preset(config, replica_options(config), REPLICA_PRESET_ENV)
    )
    ingress_opts = with_frontend_placement(
        config, with_serve_preset(config, ingress_options(config))
    )
    replica = serve.deployment(ModelReplica).options(**replica_opts)
    ingress = serve.deployment(OpenAIIngress).options(**ingress_opts)
    return ingress.bind(config, token_source(config, replica.bind(config)))


def token_source(config: AppConfig, replica: Application) -> Application:
    """What the ingress streams tokens from: the micro-batcher in front of the replicas, or
    the replicas themselves; both answer `generate_batch(requests)` (serve_app/batch_call.py)."""
    if not config.batcher.enabled:
        return replica
    options = with_frontend_placement(config, with_serve_preset(config, batcher_options(config)))
    return serve.deployment(Batcher).options(**options).bind(config, replica)


# Serve's throughput preset, set in the environment of every replica of the app: user code
# and handle routers on the replica's own event loop, Serve's gRPC transport between
# deployments, the GC frozen after start-up (the measured serving-path levers:
# bench/README.md, `serve_levers`). Three of its parts stay as Serve's defaults: direct
# ingress (it moves HTTP from Serve's proxy port to ports of the ingress replicas), and
# logging: replica logs reach stderr and their files at once, not in batches of 1000.
THROUGHPUT_PRESET_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_LOG_TO_STDERR": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
}
# The model replica's OpenMP threads sleep between parallel regions instead of spinning on
# the cores its own event loop and the other deployments need.
REPLICA_PRESET_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def with_serve_preset(
    config: AppConfig, options: dict[str, Any], extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`options` with the Serve preset's environment for the deployment's replicas."""
    if config.serve_preset != "throughput":
        return options
    actor_options = options.get("ray_actor_options", {})
    runtime_env = actor_options.get("runtime_env", {})
    env_vars = {**THROUGHPUT_PRESET_ENV, **(extra_env or {}), **runtime_env.get("env_vars", {})}
    runtime_env = {**runtime_env, "env_vars": env_vars}
    return {**options, "ray_actor_options": {**actor_options, "runtime_env": runtime_env}}


# Serve calls a deployment replica may hold beyond its share of the admission bound:
# health checks, /v1/models and calls still closing.
CALL_MARGIN = 16


def calls_per_replica(config: AppConfig, num_replicas: int) -> int:
    """A replica's share of the admission bound: every call carries at least one request,
    so Serve's own limits, derived from it, never refuse what admission let in."""
    return -(-config.admission_bound // num_replicas) + CALL_MARGIN


# Serve's proxy counts every arrival not yet handed to an ingress replica as queued, and a
# burst arrives faster than the proxy hands it over. The ingress answers what admission
# refuses with the API's JSON 429 at once, so the proxy may hold this many times an ingress
# replica's calls waiting for it: a burst of up to that size meets admission's answer, not
# the proxy's plain-text 429.
INGRESS_BURST_FACTOR = 4


def batcher_options(config: AppConfig) -> dict[str, Any]:
    settings = config.batcher
    return {
        **settings.serve_options(BATCHER_NAME, calls_per_replica(config, settings.num_replicas)),
        # The policy knobs the args set (live via reconfigure); unset ones keep defaults.
        "user_config": settings.policy.model_dump(exclude_unset=True),
    }


def replica_options(config: AppConfig) -> dict[str, Any]:
    settings = config.replica
    options: dict[str, Any] = {
        **settings.serve_options(REPLICA_NAME, calls_per_replica(config, settings.max_replicas)),
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": settings.health_check_timeout_s,
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_timeout_s,
        # Callers route around replicas on draining nodes (serve_app/replica/router.py).
        "request_router_config": RequestRouterConfig(request_router_class=DrainAwareRouter),
    }
    if settings.autoscaling is not None:
        del options["num_replicas"]
        options["autoscaling_config"] = autoscaling_config(config)
    if config.engine.tensor_parallel_size > 1:
        options["placement_group_bundles"] = rank_bundles(config)
        options["placement_group_strategy"] = "STRICT_PACK"  # one node: NCCL/gloo on its IP
    return options


def rank_bundles(config: AppConfig) -> list[dict[str, float]]:
    """One bundle per tensor-parallel rank: bundle 0 holds the replica actor (rank 0), the
    others the Ray actors of ranks 1..N-1 (serve_app/replica/ray_executor.py)."""
    resources = {"CPU": config.replica.num_cpus, "GPU": config.replica.num_gpus}
    bundle = {name: amount for name, amount in resources.items() if amount > 0}
    return [dict(bundle) for _ in range(config.engine.tensor_parallel_size)]


def ingress_options(config: AppConfig) -> dict[str, Any]:
    settings = config.ingress
    calls = calls_per_replica(config, settings.num_replicas)
    options = settings.serve_options(INGRESS_NAME, calls)
    if settings.max_queued_requests is None:
        options["max_queued_requests"] = INGRESS_BURST_FACTOR * calls
    return {
        **options,
        # If the ingress itself is full, the proxy answers 429 + Retry-After, not 503.
        "backpressure_config": {
            "status_code": 429,
            "retry_after_s": config.limits.retry_after_s,
        },
    }
