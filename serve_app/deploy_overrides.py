"""The preflight's check of a Serve config's `deployments:` overrides, before `serve deploy`.

A deploy can change an application's `args` (checked by serve_app/config.py) and its
per-deployment overrides: Serve's deployment options and, for the Batcher, the batch
policy as `user_config`. Serve validates the options only loosely (an unknown key such as
`num_replica` is dropped without a word) and the `user_config` not at all: it reaches
`Batcher.reconfigure` on the live replicas. Here each override is validated with the models
that apply it, so `make deploy` refuses a bad one before anything changes: Serve's own
`DeploymentSchema` for the options, and for a `user_config` the deployment's own model
(serve_app/deployment_names.py: the Batcher's is BatchPolicyConfig, the one its
`reconfigure` validates with). One line per problem, naming the field and what is allowed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from ray.serve.schema import DeploymentSchema

from serve_app.config import AppConfig, AppConfigError, load_app_config
from serve_app.deployment_names import app_deployments
from serve_app.validation_errors import problem_lines


def override_problems(application: dict[str, Any]) -> list[str]:
    """Every problem of one application's `deployments:` list (an entry of a Serve config's
    `applications:`), each as `deployment 'NAME' FIELD: what is wrong (allowed: ...)`."""
    overrides = application.get("deployments") or []
    if not isinstance(overrides, list):
        return [f"deployments: a list of deployment overrides expected, got {overrides!r}"]
    deployments = app_deployments(_app_config(application.get("args")))
    problems = []
    for index, override in enumerate(overrides):
        name = override.get("name") if isinstance(override, dict) else None
        if not isinstance(name, str):
            problems.append(f"deployments[{index}]: a mapping with a `name` expected")
        elif name not in deployments:
            problems.append(
                f"deployments[{index}]: unknown deployment {name!r} "
                f"(allowed: {', '.join(sorted(deployments))})"
            )
        else:
            problems += [f"deployment {name!r} {p}" for p in _problems(override, deployments)]
    return problems


def _app_config(args: dict[str, Any] | None) -> AppConfig | None:
    """The app's config, or None when its args are invalid (the preflight reports those)."""
    try:
        return load_app_config(args)
    except AppConfigError:
        return None


def _problems(
    override: dict[str, Any], deployments: dict[str, type[BaseModel] | None]
) -> list[str]:
    """One override's problems: its Serve options, then its user_config."""
    allowed = sorted(DeploymentSchema.model_fields)
    problems = [
        f"{key}: unknown deployment option (allowed: {', '.join(allowed)})"
        for key in sorted(set(override) - set(allowed))
    ]
    try:
        DeploymentSchema.model_validate(override)
    except ValidationError as error:
        problems += problem_lines(error, DeploymentSchema)
    user_config = override.get("user_config")
    if not isinstance(user_config, dict):
        return problems  # None: Serve calls no reconfigure; else DeploymentSchema said why
    model = deployments[override["name"]]
    if model is None:
        takes_one = [name for name, model in deployments.items() if model is not None]
        return [
            *problems,
            f"user_config: this deployment takes none (only {', '.join(takes_one)} does)",
        ]
    try:
        model.model_validate(user_config)
    except ValidationError as error:
        problems += [f"user_config: {line}" for line in problem_lines(error, model)]
    return problems
