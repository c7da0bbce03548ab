"""Map what can fail behind the TokenStreamer (Serve, Ray, the engine) to OpenAI errors:
overload is 429 with Retry-After, a request the engine rejects is 400, a replica that is
gone or dead (after the batcher's failover attempts) is 503, both with Retry-After."""

from __future__ import annotations

import logging

from ray.serve.exceptions import BackPressureError

from serve_app.batch_call import REPLICA_GONE
from serve_app.ingress.errors import APIError, overloaded

logger = logging.getLogger(__name__)


def to_api_error(error: BaseException, retry_after_s: int) -> APIError:
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the replica's error
    if isinstance(error, BackPressureError) or isinstance(cause, BackPressureError):
        return overloaded(retry_after_s, "the server is overloaded; retry after a moment")
    if isinstance(cause, REPLICA_GONE):  # after failover, or with the batcher off
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
