"""The application's deployments by name, and the `user_config` each one takes.

`build_app` (serve_app/app.py) names its deployments with these; a Serve config's
`deployments:` overrides must use them too, and only the Batcher takes a `user_config` (its
batch policy, applied live by `Batcher.reconfigure`). Serve hands a `user_config` to a
deployment without a `reconfigure` method as a replica failure, so the preflight
(serve_app/deploy_overrides.py) refuses one. Kept apart from app.py so the preflight can
read it without importing the deployments (app.py imports the preflight).
"""

from __future__ import annotations

from pydantic import BaseModel

from serve_app.batcher.policy import BatchPolicyConfig
from serve_app.config import AppConfig

INGRESS_NAME = "OpenAIIngress"
REPLICA_NAME = "ModelReplica"
BATCHER_NAME = "Batcher"


def app_deployments(config: AppConfig | None) -> dict[str, type[BaseModel] | None]:
    """Each deployment of the app `config` builds -> the model of its user_config (None:
    it takes none). Without a config (its args are invalid), every deployment it may have."""
    deployments: dict[str, type[BaseModel] | None] = {INGRESS_NAME: None, REPLICA_NAME: None}
    if config is None or config.batcher.enabled:
        deployments[BATCHER_NAME] = BatchPolicyConfig
    return deployments
