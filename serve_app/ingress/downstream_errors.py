"""Map what can fail behind the TokenStreamer (Serve, Ray, the engine) to OpenAI errors:
overload is 429 with Retry-After, a request the engine rejects is 400, a replica that is
gone or dead (after the batcher's failover attempts) is 503, both with Retry-After."""

from __future__ import annotations

import logging

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.batch_call import BatchStreamEndedError, BatchStreamSilentError
from serve_app.engine.async_engine import EngineDeadError
from serve_app.ingress.errors import APIError, overloaded
from serve_app.messages import ReplicaDrainingError

# A replica that is gone, dead or draining (after the batcher's failover attempts, or with
# the batcher off): the client may retry elsewhere.
UNAVAILABLE = (
    EngineDeadError,
    RayActorError,
    DeploymentUnavailableError,
    ReplicaDrainingError,
    BatchStreamEndedError,
    BatchStreamSilentError,
)

logger = logging.getLogger(__name__)


def to_api_error(error: BaseException, retry_after_s: int) -> APIError:
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the replica's error
    if isinstance(error, BackPressureError) or isinstance(cause, BackPressureError):
        return overloaded(retry_after_s, "the server is overloaded; retry after a moment")
    if isinstance(cause, UNAVAILABLE):
        return APIError(
            503,
            f"the model replica is unavailable: {cause}",
            code="unavailable",
            headers={"Retry-After": str(retry_after_s)},
        )
    if isinstance(cause, ValueError):
        return APIError(400, str(cause), code="invalid_value")
    logger.error("request failed downstream", exc_info=error)
    return APIError(500, f"internal error: {type(cause).__name__}", code="internal_error")
