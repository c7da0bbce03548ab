"""build_app: the import path Serve runs (`serve run deployments/dev.yaml`, or
`serve run serve_app.app:build_app model=/path/to/hf_dir replica.num_cpus=2`).

The graph is ingress -> model replica. Every deployment option (replicas or autoscaling,
resources, admission limits, health-check and shutdown timeouts) is computed here from the
validated AppConfig; the deployment classes themselves carry none.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import AppConfig, load_app_config
from serve_app.ingress import OpenAIIngress
from serve_app.replica import ModelReplica

INGRESS_NAME = "OpenAIIngress"
REPLICA_NAME = "ModelReplica"


def build_app(args: dict[str, Any] | None = None) -> Application:
    config = load_app_config(args)
    replica = serve.deployment(ModelReplica).options(**replica_options(config))
    ingress = serve.deployment(OpenAIIngress).options(**ingress_options(config))
    return ingress.bind(config, replica.bind(config))


def replica_options(config: AppConfig) -> dict[str, Any]:
    settings = config.replica
    options: dict[str, Any] = {
        "name": REPLICA_NAME,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        "health_check_period_s": settings.health_check_period_s,
        "health_check_timeout_s": settings.health_check_timeout_s,
        "graceful_shutdown_timeout_s": settings.graceful_shutdown_timeout_s,
    }
    if settings.autoscaling is not None:
        options["autoscaling_config"] = settings.autoscaling.model_dump()
    else:
        options["num_replicas"] = settings.num_replicas
    return options


def ingress_options(config: AppConfig) -> dict[str, Any]:
    settings = config.ingress
    return {
        "name": INGRESS_NAME,
        "num_replicas": settings.num_replicas,
        "ray_actor_options": {"num_cpus": settings.num_cpus},
        "max_ongoing_requests": settings.max_ongoing_requests,
        "max_queued_requests": settings.max_queued_requests,
        # If the ingress itself is full, the proxy answers 429 + Retry-After, not 503.
        "backpressure_config": {
            "status_code": 429,
            "retry_after_s": config.limits.retry_after_s,
        },
    }
