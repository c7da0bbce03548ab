"""Request checks shared by the HTTP and gRPC faces of the ingress.

`parse_request` validates a JSON body into an OpenAI request model (a gRPC GenerateRequest
is first rendered as the equivalent /v1/completions body), and `check_model` refuses a
model this server does not serve. Both raise APIError naming the field, so each protocol
maps the same failure to its own status (HTTP 400/404, gRPC INVALID_ARGUMENT/NOT_FOUND).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from serve_app.ingress.errors import APIError

RequestModel = TypeVar("RequestModel", bound=BaseModel)


def parse_request(model: type[RequestModel], body: bytes) -> RequestModel:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise APIError(
                400, f"the request body is not valid JSON: {first['msg']}", code="invalid_json"
            ) from None
        location = [str(part) for part in first["loc"]]
        # Union members add their type names to the location; keep the field path only.
        param = ".".join(p for p in location if not p.startswith(("str", "list[", "int"))) or None
        raise APIError(
            400, f"{param or 'body'}: {first['msg']}", param=param, code="invalid_value"
        ) from None


def check_model(requested: str, served: str) -> None:
    """Raise a 404 APIError unless `requested` is the served model's name."""
    if requested != served:
        raise APIError(
            404,
            f"model {requested!r} does not exist; this server serves {served!r} (see /v1/models)",
            param="model",
            code="model_not_found",
        )
