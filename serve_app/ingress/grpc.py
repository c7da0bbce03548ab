"""The gRPC methods of the ingress deployment: `Generate` (unary) and `GenerateStream`.

Serve's gRPC proxy calls the ingress method named like the RPC (see grpc_service.py for
how it routes). `GrpcMethods` is a mixin of `OpenAIIngress`, so a gRPC call runs the HTTP
path's own pieces on the same replica (after checking the `application` metadata names
this application): the API key check, the request model and its ranges
(a GenerateRequest is validated as the equivalent /v1/completions body), the model name,
tokenization and limits (`build_choices`), the TokenStreamer with incremental
detokenization and stop strings (`generate_choice`), and the mapping of downstream
failures (`to_api_error`). Every failure is an APIError whose HTTP status maps to a gRPC
code (`grpc_code_for_http_status`); the details name the field at fault.

How a failure reaches the caller: `Generate` sets code, details and trailing metadata on
the context and returns an empty message, which the proxy copies onto the call (gRPC drops
the message of a non-OK call), so an overload carries `retry-after` (seconds) in trailing
metadata. `GenerateStream` must raise instead (the proxy copies the context only with a
message): the code and details arrive, the retry hint is in the details.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from serve_app.config import LimitSettings
from serve_app.engine.sequence import TokenLogprobs
from serve_app.ingress.auth import ApiKeys
from serve_app.ingress.choices import build_choices, completion_prompts
from serve_app.ingress.downstream_errors import to_api_error
from serve_app.ingress.errors import APIError
from serve_app.ingress.grpc_mapping import (
    GrpcRequestError,
    bearer_token,
    grpc_code_for_http_status,
    make_chunk,
    make_response,
    parse_generate_request,
    usage_message,
)
from serve_app.ingress.protocol import CompletionRequest, new_id
from serve_app.ingress.text_stream import ChoiceRequest, TextDelta, generate_choice
from serve_app.ingress.token_source import TokenStreamer
from serve_app.ingress.validation import check_model, parse_request
from serve_app.metrics import IngressMetrics
from serve_app.proto import llm_pb2
from serve_app.request_log import DISCONNECTED_CODE, DISCONNECTED_STATUS, RequestLog, RequestTrace

SERVICE = "/serve_app.llm.LLM"
UNARY_ROUTE = f"{SERVICE}/Generate"  # the `route` label of the request metrics
STREAM_ROUTE = f"{SERVICE}/GenerateStream"


class GrpcAbort(Exception):
    """Ends a GenerateStream call whose status code is already set on the context."""


@dataclass(frozen=True, slots=True)
class GrpcFailure:
    code: grpc.StatusCode
    details: str
    http_status: int  # the same failure over HTTP: the metrics' `status` label
    trailing_metadata: tuple[tuple[str, str], ...] = ()
    error_code: str | None = None  # the HTTP error body's `code`


@dataclass(frozen=True, slots=True)
class GrpcCall:
    response_id: str
    choice: ChoiceRequest
    prompt_tokens: int


def failure_of(error: Exception, retry_after_s: int) -> GrpcFailure:
    """The gRPC status of any failure of a call, as the HTTP path would have reported it."""
    if isinstance(error, GrpcRequestError):
        return GrpcFailure(error.code, str(error), 400, error_code="invalid_value")
    api_error = error if isinstance(error, APIError) else to_api_error(error, retry_after_s)
    details = api_error.message
    if api_error.param and not details.startswith(api_error.param):
        details = f"{api_error.param}: {details}"
    retry_after = api_error.headers.get("Retry-After")
    if retry_after is not None:
        details += f" (retry after {retry_after} s)"
    trailing = tuple((name.lower(), value) for name, value in api_error.headers.items())
    return GrpcFailure(
        grpc_code_for_http_status(api_error.status),
        details,
        api_error.status,
        trailing,
        api_error.code,
    )


def check_application(metadata: Iterable[tuple[str, str | bytes]], served: str) -> None:
    """Refuse a call whose `application` metadata names another Serve application: Serve's
    gRPC proxy routes by that name only while several applications run, and sends every
    call to the only one otherwise, whatever it names (a typo would pass unseen)."""
    for key, value in metadata:
        if key.lower() != "application":
            continue
        named = value.decode() if isinstance(value, bytes) else value
        if named != served:
            raise APIError(
                404,
                f"application {named!r} is not served here: the `application` metadata "
                f"must be {served!r} (or left out while it is the only application)",
                param="application",
                code="application_not_found",
            )


def completion_body(
    request: llm_pb2.GenerateRequest, default_model: str, default_max_tokens: int
) -> bytes:
    """The /v1/completions JSON body equivalent to a GenerateRequest (after its own checks)."""
    parsed = parse_generate_request(request, max_tokens=default_max_tokens)
    body: dict[str, Any] = {
        "model": parsed.model or default_model,
        "prompt": parsed.prompt if parsed.prompt is not None else parsed.prompt_token_ids,
        **parsed.sampling_kwargs,
    }
    if parsed.stop:
        body["stop"] = parsed.stop
    if request.HasField("logprobs"):
        body["logprobs"] = request.logprobs
    return json.dumps(body).encode()


def logprob_messages(entries: list[TokenLogprobs]) -> list[llm_pb2.TokenLogprob]:
    return [
        llm_pb2.TokenLogprob(token_id=e.token_id, logprob=e.logprob, top_logprobs=e.top)
        for e in entries
    ]


class GrpcMethods:
    """Mixin: the ingress's gRPC methods; the ingress provides the attributes below."""

    limits: LimitSettings
    app_name: str  # the Serve application this ingress serves
    model_name: str
    streamer: TokenStreamer
    tokenizer: Any
    api_keys: ApiKeys
    metrics: IngressMetrics
    request_log: RequestLog

    async def Generate(self, request: llm_pb2.GenerateRequest, grpc_context) -> Any:
        trace = self._grpc_trace(UNARY_ROUTE, grpc_context)
        status, code, tokens, text, finish_reason = 200, None, [], "", ""
        logprobs: list[TokenLogprobs] = []
        try:
            call = self._grpc_call(request, grpc_context, trace)
            prompt_tokens = call.prompt_tokens
            async for delta in trace.watch(self._grpc_deltas(call)):
                text += delta.text
                tokens += delta.token_ids
                logprobs += delta.logprobs
                finish_reason = delta.finish_reason or finish_reason
            usage = usage_message(prompt_tokens, len(tokens))
            response = make_response(
                call.response_id, self.model_name, text, tokens, finish_reason, usage
            )
            response.logprobs.extend(logprob_messages(logprobs))
            return response
        except Exception as error:
            failure = failure_of(error, self.limits.retry_after_s)
            status, code = failure.http_status, failure.error_code
            _set_failure(grpc_context, failure)
            grpc_context.set_trailing_metadata(list(failure.trailing_metadata))
            return llm_pb2.GenerateResponse()  # dropped by gRPC: the call fails with the code
        except BaseException:  # CancelledError: the client left
            status, code = DISCONNECTED_STATUS, DISCONNECTED_CODE
            raise
        finally:
            self._finish_request(trace, status, code)

    async def GenerateStream(
        self, request: llm_pb2.GenerateRequest, grpc_context
    ) -> AsyncIterator[llm_pb2.GenerateChunk]:
        trace = self._grpc_trace(STREAM_ROUTE, grpc_context)
        status, code = 200, None
        try:
            call = self._grpc_call(request, grpc_context, trace)
            prompt_tokens = call.prompt_tokens
            async for delta in trace.watch(self._grpc_deltas(call)):
                usage = (
                    usage_message(prompt_tokens, delta.num_output_tokens)
                    if delta.finish_reason
                    else None
                )
                chunk = make_chunk(
                    call.response_id,
                    self.model_name,
                    delta.text,
                    delta.token_ids,
                    delta.finish_reason,
                    usage,
                )
                chunk.logprobs.extend(logprob_messages(delta.logprobs))
                yield chunk
        except Exception as error:
            failure = failure_of(error, self.limits.retry_after_s)
            status, code = failure.http_status, failure.error_code
            _set_failure(grpc_context, failure)
            raise GrpcAbort(failure.details) from None
        except BaseException:  # GeneratorExit or CancelledError: the client left
            status, code = DISCONNECTED_STATUS, DISCONNECTED_CODE
            raise
        finally:
            self._finish_request(trace, status, code)

    # ---- shared by both methods (and the HTTP routes) -------------------------------------
    def _finish_request(self, trace: RequestTrace, status: int, code: str | None = None) -> None:
        """Record a finished request: its metrics and its request-log line."""
        trace.finish(status, code)
        self.metrics.record_request(trace)
        self.request_log.emit(trace)

    def _grpc_trace(self, route: str, grpc_context) -> RequestTrace:
        metadata = dict(grpc_context.invocation_metadata() or ())
        return self.request_log.trace(route, self.model_name, metadata)

    def _grpc_call(
        self, request: llm_pb2.GenerateRequest, grpc_context, trace: RequestTrace
    ) -> GrpcCall:
        """Authenticate and validate exactly as POST /v1/completions does."""
        check_application(grpc_context.invocation_metadata(), self.app_name)
        token = bearer_token(grpc_context.invocation_metadata())
        self.api_keys.check(f"Bearer {token}" if token else None)
        size, limit = request.ByteSize(), self.limits.max_body_bytes
        if size > limit:
            raise APIError(
                413, f"the request is {size} bytes; at most {limit} are allowed", code="too_large"
            )
        body = completion_body(request, self.model_name, self.limits.default_max_tokens)
        completion = parse_request(CompletionRequest, body)
        check_model(completion.model, self.model_name)
        trace.set_prompt(completion.prompt)
        prompts = completion_prompts(completion, self.tokenizer)
        response_id = trace.response_id = new_id("cmpl")
        [choice] = build_choices(completion, prompts, self.limits, completion.logprobs, response_id)
        trace.prompt_tokens = len(choice.prompt_ids)
        return GrpcCall(response_id, choice, len(choice.prompt_ids))

    async def _grpc_deltas(self, call: GrpcCall) -> AsyncIterator[TextDelta]:
        deltas = generate_choice(self.streamer, self.tokenizer, call.choice)
        try:
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()  # on cancellation too: stops the request downstream


def _set_failure(grpc_context, failure: GrpcFailure) -> None:
    grpc_context.set_code(failure.code)
    grpc_context.set_details(failure.details)
