"""The gRPC face of the app: pure mapping between llm.proto messages and the engine's terms.

Nothing here imports ray; the ingress deployment calls these functions from its gRPC methods.

Design note: how Ray Serve 2.60's gRPC proxy reaches our code.
- The serve config's top-level `grpc_options` turns the proxy's gRPC server on:
  `port: 9000` and `grpc_servicer_functions:
  ["serve_app.proto.llm_pb2_grpc.add_LLMServicer_to_server"]`. The proxy imports each
  function and calls it with a mock servicer only to learn the method names; it replaces
  every handler with its own, so no servicer class of ours ever runs in the proxy. The
  function must be importable where Serve runs (the stubs live in the package for that).
- A call to `/serve_app.llm.LLM/<Method>` goes to the application's ingress deployment and
  calls *its* method of the same name with the deserialized request: `Generate` must return
  a `GenerateResponse`, `GenerateStream` must be a generator of `GenerateChunk`. A method
  with a parameter named `grpc_context` also gets a `RayServegRPCContext`: metadata via
  `invocation_metadata()`, and `set_code()` / `set_details()` for errors (a code set before
  raising is kept by the proxy; otherwise an exception becomes INTERNAL).
- Routing metadata: `application` picks the Serve application (optional while only one is
  running; then the proxy sends a call naming any application to it, so the ingress refuses
  a name that is not its own: `grpc.check_application`), `request_id` and
  `multiplexed_model_id` are honoured as for HTTP. Credentials travel as
  `authorization: Bearer <key>` metadata, as the HTTP header does.
- The proxy itself answers RESOURCE_EXHAUSTED when a deployment's queue is full
  (`max_queued_requests`), UNAVAILABLE when no replica can take the call and
  DEADLINE_EXCEEDED past `grpc_options.request_timeout_s`; our own errors map HTTP statuses
  to codes with `grpc_code_for_http_status` so both protocols fail the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from serve_app.engine.sampling_params import SamplingParams, SamplingParamsError
from serve_app.proto import llm_pb2

# GenerateRequest fields that map one to one onto SamplingParams, when the caller set them.
SAMPLING_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "min_tokens",
    "ignore_eos",
)

HTTP_STATUS_TO_GRPC_CODE: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    # Too large is the caller's to fix, not a reason to retry: not RESOURCE_EXHAUSTED.
    413: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class GrpcRequestError(ValueError):
    """A request the service refuses; carries the gRPC status code and the field at fault."""

    def __init__(self, code: grpc.StatusCode, message: str, field_name: str | None = None):
        super().__init__(message)
        self.code = code
        self.field_name = field_name


@dataclass(frozen=True, slots=True)
class GenerateInput:
    """A validated GenerateRequest: exactly one prompt form, and engine sampling kwargs."""

    model: str | None  # None: the default model
    prompt: str | None
    prompt_token_ids: list[int] | None
    sampling_kwargs: dict[str, object] = field(default_factory=dict)  # only what was set
    stop: list[str] = field(default_factory=list)  # stop strings: the ingress checks them

    def sampling_params(self, **defaults: object) -> SamplingParams:
        """SamplingParams from the request, `defaults` filling what the caller left unset."""
        return SamplingParams(**{**defaults, **self.sampling_kwargs})


def parse_generate_request(request: llm_pb2.GenerateRequest, **defaults: object) -> GenerateInput:
    """Validate a GenerateRequest; bad input raises GrpcRequestError(INVALID_ARGUMENT).

    `defaults` are the server's SamplingParams defaults for unset fields (the ingress passes
    its `limits.default_max_tokens`), so the range checks see what the request will run with.
    """
    has_text, has_ids = bool(request.prompt), len(request.prompt_token_ids) > 0
    if has_text == has_ids:
        raise invalid_argument(
            "prompt", "exactly one of prompt or prompt_token_ids must be set (non-empty)"
        )
    if any(not stop for stop in request.stop):
        raise invalid_argument("stop", "stop strings must be non-empty")
    sampling_kwargs: dict[str, object] = {
        name: getattr(request, name) for name in SAMPLING_FIELDS if request.HasField(name)
    }
    if request.stop_token_ids:
        sampling_kwargs["stop_token_ids"] = list(request.stop_token_ids)
    parsed = GenerateInput(
        model=request.model or None,
        prompt=request.prompt if has_text else None,
        prompt_token_ids=list(request.prompt_token_ids) if has_ids else None,
        sampling_kwargs=sampling_kwargs,
        stop=list(request.stop),
    )
    try:
        parsed.sampling_params(**defaults)  # the engine's own range checks, once, here
    except SamplingParamsError as error:
        field_name = str(error).split(" ", 1)[0]
        raise GrpcRequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error), field_name) from None
    return parsed


def invalid_argument(field_name: str, message: str) -> GrpcRequestError:
    return GrpcRequestError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {message}", field_name
    )


def grpc_code_for_http_status(status: int) -> grpc.StatusCode:
    """The gRPC status code of an HTTP error status; unknown 4xx/5xx map to their class."""
    if status in HTTP_STATUS_TO_GRPC_CODE:
        return HTTP_STATUS_TO_GRPC_CODE[status]
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The key of an `authorization: Bearer <key>` metadata entry; None when absent."""
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode() if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def usage_message(prompt_tokens: int, completion_tokens: int) -> llm_pb2.Usage:
    return llm_pb2.Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def make_chunk(
    request_id: str,
    model: str,
    text: str,
    token_ids: list[int],
    finish_reason: str | None = None,
    usage: llm_pb2.Usage | None = None,
) -> llm_pb2.GenerateChunk:
    """One streamed piece; the last one carries finish_reason and usage."""
    assert (finish_reason is None) == (usage is None), "the last chunk carries both"
    return llm_pb2.GenerateChunk(
        id=request_id,
        model=model,
        text=text,
        token_ids=token_ids,
        finish_reason=finish_reason or "",
        usage=usage,
    )


def make_response(
    request_id: str,
    model: str,
    text: str,
    token_ids: list[int],
    finish_reason: str,
    usage: llm_pb2.Usage,
) -> llm_pb2.GenerateResponse:
    return llm_pb2.GenerateResponse(
        id=request_id,
        model=model,
        text=text,
        token_ids=token_ids,
        finish_reason=finish_reason,
        usage=usage,
    )
