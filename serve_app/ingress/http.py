"""The OpenAI-compatible HTTP ingress (FastAPI under Serve).

No `from __future__ import annotations` here: FastAPI must see real types on the routes.

It authenticates, reads and validates the body, applies the chat template, tokenizes,
enforces limits, streams choices from a TokenStreamer (token ids only cross it) and turns
them into text with incremental detokenization and stop strings, as JSON or as SSE.
The gRPC methods (`Generate`, `GenerateStream`) come from `GrpcMethods` (grpc_ingress.py)
and run the same steps.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from serve_app.config import AppConfig
from serve_app.deployment_names import REPLICA_NAME
from serve_app.engine.model_path import resolve_model_dir
from serve_app.ingress import sse
from serve_app.ingress.admission import Admission, AdmittedTokenStreamer
from serve_app.ingress.auth import ApiKeys
from serve_app.ingress.choices import build_choices, chat_prompt, completion_prompts
from serve_app.ingress.downstream_errors import to_api_error
from serve_app.ingress.errors import APIError, error_body, error_response, install_error_handlers
from serve_app.ingress.grpc import GrpcMethods
from serve_app.ingress.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    model_list,
    new_id,
    now,
)
from serve_app.ingress.replica_health import ReplicaHealth
from serve_app.ingress.responses import ChoiceResult, ResponseBuilder
from serve_app.ingress.serve_replicas import ServeReplicas
from serve_app.ingress.text_stream import TextDelta, generate_choice, merge
from serve_app.ingress.token_source import BatchingTokenStreamer, TokenStreamer
from serve_app.ingress.validation import check_model, parse_request
from serve_app.log_digest import cluster_salt
from serve_app.metrics import IngressMetrics
from serve_app.request_log import DISCONNECTED_CODE, DISCONNECTED_STATUS, RequestLog, RequestTrace

api = FastAPI(title="serve-app OpenAI-compatible API")
install_error_handlers(api)


@serve.ingress(api)
class OpenAIIngress(GrpcMethods):
    def __init__(self, config: AppConfig, model_handle, streamer: TokenStreamer | None = None):
        from transformers import AutoTokenizer

        self.config = config
        self.limits = config.limits
        self.model_name = config.model_name
        self.app_name = serve.get_replica_context().app_name
        # Every model replica's health, cached: what /health and admission read.
        self._model_replicas = ServeReplicas(self.app_name, REPLICA_NAME)
        self.replica_health = ReplicaHealth(
            self._model_replicas.replicas,
            config.ingress.replica_health_period_s,
            config.ingress.replica_health_timeout_s,
        )
        self.replica_health.start()  # Serve runs __init__ on the replica's event loop
        self.streamer = AdmittedTokenStreamer(
            streamer or BatchingTokenStreamer.for_config(model_handle, config),
            Admission(config, serving_replicas=self.replica_health.num_healthy),
            config.limits.retry_after_s,
        )
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(config.model))
        self.api_keys = ApiKeys.from_settings(config.auth)
        self.metrics = IngressMetrics()
        self.request_log = RequestLog(
            config.request_log, secrets=self.api_keys.keys, salt=cluster_salt()
        )
        self.created = now()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # __init__ may have failed before setting them
            self.replica_health.stop()
            self._model_replicas.stop()

    @api.get("/health")
    async def health(self):
        """200 when at least one model replica's engine can serve (not merely when this
        ingress is up), per the cached probes of every replica; 503 + Retry-After, naming
        the state, otherwise. No remote call: load balancers may ask as often as they like."""
        problem = self.replica_health.problem()
        if problem is not None:
            return error_response(
                APIError(
                    503,
                    f"no model replica can serve: {problem}",
                    code="unavailable",
                    headers={"Retry-After": str(self.limits.retry_after_s)},
                )
            )
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self.api_keys.check(request.headers.get("authorization"))
        return model_list(self.model_name, self.created)

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._serve(request, "/v1/completions", chat=False)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._serve(request, "/v1/chat/completions", chat=True)

    # ---- the shared path ------------------------------------------------------------------
    async def _serve(self, http_request: Request, route: str, chat: bool):
        trace = self.request_log.trace(route, self.model_name, http_request.headers)
        try:
            self.api_keys.check(http_request.headers.get("authorization"))
            body = await self._read_body(http_request)
            request = parse_request(ChatCompletionRequest if chat else CompletionRequest, body)
            check_model(request.model, self.model_name)
            if isinstance(request, ChatCompletionRequest):
                prompts = [chat_prompt(request, self.tokenizer)]
                num_logprobs = request.num_logprobs
            else:
                prompts = completion_prompts(request, self.tokenizer)
                num_logprobs = request.logprobs
            trace.set_prompt(request.messages if chat else request.prompt)
            response_id = trace.response_id = new_id("chatcmpl" if chat else "cmpl")
            choices = build_choices(request, prompts, self.limits, num_logprobs, response_id)
            builder = ResponseBuilder(
                chat, response_id, self.model_name, now(), self.tokenizer, num_logprobs is not None
            )
            prompt_tokens = sum(len(p) for p in prompts)  # once per prompt, whatever n is
            trace.prompt_tokens = prompt_tokens
            deltas = merge([generate_choice(self.streamer, self.tokenizer, c) for c in choices])
            deltas = trace.watch(deltas)
            if request.stream:
                first = await self._first(deltas)
                stream = self._sse(
                    builder,
                    first,
                    deltas,
                    len(choices),
                    prompt_tokens,
                    request.include_usage,
                    trace,
                )
                return StreamingResponse(stream, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
            results = await self._collect(deltas, len(choices))
            self._finish_request(trace, 200)
            return JSONResponse(builder.full(results, prompt_tokens))
        except APIError as error:
            self._finish_request(trace, error.status, error.code)
            return error_response(error)
        except asyncio.CancelledError:  # the client left before the response started
            self._finish_request(trace, DISCONNECTED_STATUS, DISCONNECTED_CODE)
            raise

    def _as_api_error(self, error: BaseException) -> APIError:
        if isinstance(error, APIError):
            return error
        return to_api_error(error, self.limits.retry_after_s)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        too_large = APIError(
            413, f"the request body is larger than {limit} bytes", code="request_too_large"
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def _first(self, deltas: AsyncIterator[TextDelta]) -> TextDelta:
        """Wait for the first output so overload or a bad prompt gets a status, not a stream."""
        try:
            return await anext(deltas)
        except Exception as error:
            await deltas.aclose()
            raise self._as_api_error(error) from None
        except BaseException:
            await deltas.aclose()
            raise

    async def _collect(self, deltas: AsyncIterator[TextDelta], count: int) -> list[ChoiceResult]:
        results = [ChoiceResult(index) for index in range(count)]
        try:
            async for delta in deltas:
                results[delta.index].add(delta)
        except Exception as error:
            raise self._as_api_error(error) from None
        return results

    async def _sse(
        self,
        builder: ResponseBuilder,
        first: TextDelta,
        deltas: AsyncIterator[TextDelta],
        num_choices: int,
        prompt_tokens: int,
        include_usage: bool,
        trace: RequestTrace,
    ) -> AsyncIterator[str]:
        output_tokens = [0] * num_choices
        status, code = 200, None
        try:
            if builder.chat:
                for index in range(num_choices):
                    yield sse.event(builder.role_chunk(index))
            delta: TextDelta | None = first
            while delta is not None:
                output_tokens[delta.index] = delta.num_output_tokens
                yield sse.event(builder.chunk(delta))
                delta = await anext(deltas, None)
            if include_usage:
                yield sse.event(builder.usage_chunk(prompt_tokens, sum(output_tokens)))
            yield sse.DONE
        except Exception as error:  # the stream has started: report in-band, then end it
            api_error = self._as_api_error(error)
            status, code = api_error.status, api_error.code
            yield sse.event(error_body(api_error.status, api_error.message, code=api_error.code))
            yield sse.DONE
        except BaseException:  # GeneratorExit or CancelledError: the client left
            status, code = DISCONNECTED_STATUS, DISCONNECTED_CODE
            raise
        finally:
            await deltas.aclose()  # on disconnect too: cancels the requests downstream
            self._finish_request(trace, status, code)
