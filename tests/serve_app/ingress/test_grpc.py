"""The gRPC ingress's Ray-free parts: every failure's status code, details and trailing
metadata (as HTTP reports it), and the GenerateRequest -> /v1/completions body."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import grpc
import pytest
import yaml
from ray.serve._private.common import DeploymentID
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.engine.errors import EngineDeadError
from serve_app.ingress.errors import APIError
from serve_app.ingress.grpc import check_application, completion_body, failure_of
from serve_app.ingress.grpc_mapping import GrpcRequestError
from serve_app.proto import llm_pb2


def test_overload_is_resource_exhausted_with_retry_after_metadata() -> None:
    failure = failure_of(BackPressureError(num_queued_requests=8, max_queued_requests=8), 3)
    assert failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failure.http_status == 429
    assert failure.trailing_metadata == (("retry-after", "3"),)
    assert failure.details.endswith("(retry after 3 s)")


@pytest.mark.parametrize(
    "error",
    [
        EngineDeadError("the engine loop stopped"),
        DeploymentUnavailableError(DeploymentID(name="ModelReplica", app_name="llm")),
    ],
    ids=["engine-dead", "deployment-unavailable"],
)
def test_dead_or_unavailable_replica_is_unavailable(error: Exception) -> None:
    failure = failure_of(error, 1)
    assert (failure.code, failure.http_status) == (grpc.StatusCode.UNAVAILABLE, 503)
    assert failure.trailing_metadata == (("retry-after", "1"),)  # a client may come back
    assert failure.details.endswith("(retry after 1 s)")


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (APIError(401, "bad API key"), grpc.StatusCode.UNAUTHENTICATED, "bad API key"),
        (
            APIError(404, "model 'x' does not exist", param="model"),
            grpc.StatusCode.NOT_FOUND,
            "model 'x' does not exist",  # names its field already: no prefix
        ),
        (
            APIError(400, "the prompt has 300 tokens", param="prompt"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt: the prompt has 300 tokens",
        ),
        (
            APIError(400, "max_tokens must be <= 10", param="max_tokens"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_tokens must be <= 10",  # names its field already: no prefix
        ),
        (APIError(413, "too large"), grpc.StatusCode.INVALID_ARGUMENT, "too large"),
        (ValueError("prompt token ids must be in [0, 512)"), grpc.StatusCode.INVALID_ARGUMENT, ""),
        (
            GrpcRequestError(grpc.StatusCode.INVALID_ARGUMENT, "stop: must be non-empty", "stop"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "stop: must be non-empty",
        ),
        (RuntimeError("boom"), grpc.StatusCode.INTERNAL, "internal error: RuntimeError"),
    ],
)
def test_failures_map_like_their_http_status(
    error: Exception, code: grpc.StatusCode, details: str
) -> None:
    failure = failure_of(error, 1)
    assert failure.code == code
    assert failure.details.startswith(details) if details else failure.details == str(error)
    assert failure.trailing_metadata == ()


def test_completion_body_carries_only_what_was_set() -> None:
    request = llm_pb2.GenerateRequest(
        prompt_token_ids=[1, 2, 3], temperature=0.0, max_tokens=5, stop=["\n"], seed=9, logprobs=0
    )
    body = json.loads(completion_body(request, "tiny", 16))
    assert body == {
        "model": "tiny",
        "prompt": [1, 2, 3],
        "temperature": 0.0,
        "max_tokens": 5,
        "seed": 9,
        "stop": ["\n"],
        "logprobs": 0,
    }
    named = json.loads(completion_body(llm_pb2.GenerateRequest(model="m", prompt="hi"), "tiny", 16))
    assert named == {"model": "m", "prompt": "hi"}


def test_completion_body_refuses_two_prompt_forms() -> None:
    request = llm_pb2.GenerateRequest(prompt="hi", prompt_token_ids=[1])
    with pytest.raises(GrpcRequestError) as caught:
        completion_body(request, "tiny", 16)
    assert (caught.value.code, caught.value.field_name) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt",
    )


def test_dev_grpc_yaml_serves_the_llm_service_on_port_9000() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve_app.proto import llm_pb2_grpc

    dev = Path(__file__).parents[3] / "deployments" / "dev-grpc.yaml"
    options = ServeDeploySchema.model_validate(yaml.safe_load(dev.read_text())).grpc_options
    assert options.port == 9000
    [path] = options.grpc_servicer_functions
    module, name = path.rsplit(".", 1)
    assert importlib.import_module(module) is llm_pb2_grpc
    assert getattr(llm_pb2_grpc, name) is llm_pb2_grpc.add_LLMServicer_to_server


def test_min_tokens_is_checked_against_the_servers_default_max_tokens() -> None:
    request = llm_pb2.GenerateRequest(prompt="hi", min_tokens=40)  # no max_tokens
    assert json.loads(completion_body(request, "tiny", 64))["min_tokens"] == 40
    with pytest.raises(GrpcRequestError) as caught:
        completion_body(request, "tiny", 32)
    assert caught.value.field_name == "min_tokens"


def test_an_application_other_than_the_served_one_is_not_found() -> None:
    """Serve's gRPC proxy sends a call to the only running application whatever its
    `application` metadata names; before, a misspelt name was served as if right."""
    check_application([("application", "llm")], "llm")
    check_application([("authorization", "Bearer k")], "llm")  # optional: left out
    with pytest.raises(APIError) as caught:
        check_application([("application", b"lmm")], "llm")
    failure = failure_of(caught.value, 1)
    assert (failure.code, failure.http_status) == (grpc.StatusCode.NOT_FOUND, 404)
    assert failure.details.startswith("application 'lmm' is not served here")
    assert "must be 'llm'" in failure.details
