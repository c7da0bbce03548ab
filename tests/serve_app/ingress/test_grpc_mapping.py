"""gRPC mapping: proto request -> prompt + SamplingParams, error codes, metadata, responses."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from serve_app.engine.sampling_params import SamplingParams
from serve_app.ingress.grpc_mapping import (
    GrpcRequestError,
    bearer_token,
    grpc_code_for_http_status,
    make_chunk,
    make_response,
    parse_generate_request,
    usage_message,
)
from serve_app.proto import llm_pb2, llm_pb2_grpc


def test_text_prompt_with_all_sampling_fields() -> None:
    request = llm_pb2.GenerateRequest(
        model="tiny",
        prompt="Hello",
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        seed=42,
        stop=["\n\n", "END"],
        stop_token_ids=[3, 4],
        min_tokens=2,
        ignore_eos=True,
    )
    parsed = parse_generate_request(request)
    assert parsed.model == "tiny"
    assert (parsed.prompt, parsed.prompt_token_ids) == ("Hello", None)
    assert parsed.stop == ["\n\n", "END"]
    assert parsed.sampling_params() == SamplingParams(
        max_tokens=7,
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        repetition_penalty=1.2,
        seed=42,
        stop_token_ids=[3, 4],
        min_tokens=2,
        ignore_eos=True,
    )


def test_unset_fields_are_left_to_the_server_defaults() -> None:
    parsed = parse_generate_request(llm_pb2.GenerateRequest(prompt_token_ids=[5, 6, 7]))
    assert parsed.model is None
    assert (parsed.prompt, parsed.prompt_token_ids) == (None, [5, 6, 7])
    assert parsed.sampling_kwargs == {}
    # temperature 0 is a value the caller set, not "unset" (proto3 optional keeps presence)
    parsed = parse_generate_request(llm_pb2.GenerateRequest(prompt="x", temperature=0.0))
    assert parsed.sampling_kwargs == {"temperature": 0.0}
    params = parsed.sampling_params(max_tokens=64)
    assert (params.max_tokens, params.temperature) == (64, 0.0)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({}, "prompt"),
        ({"prompt": "a", "prompt_token_ids": [1]}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "temperature": -1.0}, "temperature"),
        ({"prompt": "a", "top_p": 0.0}, "top_p"),
        ({"prompt": "a", "top_k": -2}, "top_k"),
        ({"prompt": "a", "presence_penalty": 3.0}, "presence_penalty"),
        ({"prompt": "a", "repetition_penalty": 0.0}, "repetition_penalty"),
        ({"prompt": "a", "seed": 2**63}, "seed"),
        ({"prompt": "a", "stop": ["ok", ""]}, "stop"),
        ({"prompt": "a", "max_tokens": 4, "min_tokens": 5}, "min_tokens"),
    ],
)
def test_invalid_requests_are_invalid_argument_naming_the_field(
    fields: dict, field_name: str
) -> None:
    with pytest.raises(GrpcRequestError) as raised:
        parse_generate_request(llm_pb2.GenerateRequest(**fields))
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.field_name == field_name
    assert field_name in str(raised.value)


def test_http_statuses_map_to_the_same_grpc_codes() -> None:
    assert grpc_code_for_http_status(400) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code_for_http_status(401) == grpc.StatusCode.UNAUTHENTICATED
    assert grpc_code_for_http_status(404) == grpc.StatusCode.NOT_FOUND
    assert grpc_code_for_http_status(413) == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_code_for_http_status(429) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_code_for_http_status(503) == grpc.StatusCode.UNAVAILABLE
    assert grpc_code_for_http_status(418) == grpc.StatusCode.FAILED_PRECONDITION
    assert grpc_code_for_http_status(500) == grpc.StatusCode.INTERNAL


def test_bearer_token_from_metadata() -> None:
    assert bearer_token([("application", "llm"), ("authorization", "Bearer sk-1")]) == "sk-1"
    assert bearer_token([("authorization", b"bearer  sk-2 ")]) == "sk-2"
    assert bearer_token([("authorization", "Basic abc")]) is None
    assert bearer_token([("authorization", "Bearer ")]) is None
    assert bearer_token([]) is None


def test_chunks_and_responses_round_trip_on_the_wire() -> None:
    middle = make_chunk("cmpl-1", "tiny", "he", [104, 101])
    last = make_chunk("cmpl-1", "tiny", "y", [121], "length", usage_message(3, 3))
    decoded = llm_pb2.GenerateChunk.FromString(last.SerializeToString())
    assert (decoded.text, list(decoded.token_ids), decoded.finish_reason) == ("y", [121], "length")
    assert (decoded.usage.prompt_tokens, decoded.usage.total_tokens) == (3, 6)
    assert not middle.HasField("usage") and middle.finish_reason == ""

    response = make_response("cmpl-2", "tiny", "hey", [104, 101, 121], "stop", usage_message(2, 3))
    decoded = llm_pb2.GenerateResponse.FromString(response.SerializeToString())
    assert (decoded.id, decoded.text, decoded.finish_reason) == ("cmpl-2", "hey", "stop")
    assert decoded.usage.completion_tokens == 3


class EchoServicer(llm_pb2_grpc.LLMServicer):
    """Serves each prompt's bytes back as tokens, through the mapping functions under test."""

    async def Generate(self, request, context):
        chunks = [chunk async for chunk in self.GenerateStream(request, context)]
        return make_response(
            "cmpl-e",
            chunks[-1].model,
            "".join(chunk.text for chunk in chunks),
            [token for chunk in chunks for token in chunk.token_ids],
            chunks[-1].finish_reason,
            chunks[-1].usage,
        )

    async def GenerateStream(self, request, context):
        try:
            parsed = parse_generate_request(request)
        except GrpcRequestError as error:
            await context.abort(error.code, str(error))
        tokens = list(parsed.prompt.encode())[: parsed.sampling_params().max_tokens]
        for index, token in enumerate(tokens):
            last = index == len(tokens) - 1
            yield make_chunk(
                "cmpl-e",
                parsed.model or "tiny",
                chr(token),
                [token],
                "length" if last else None,
                usage_message(len(tokens), len(tokens)) if last else None,
            )


def test_stubs_serve_and_errors_arrive_as_status_codes() -> None:
    """The generated stubs on a real grpc.aio server over loopback, unary and streaming."""
    asyncio.run(serve_and_call())


async def serve_and_call() -> None:
    server = grpc.aio.server()
    llm_pb2_grpc.add_LLMServicer_to_server(EchoServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = llm_pb2_grpc.LLMStub(channel)
            response = await stub.Generate(llm_pb2.GenerateRequest(prompt="hello", max_tokens=4))
            assert (response.text, response.finish_reason) == ("hell", "length")
            assert list(response.token_ids) == list(b"hell")
            assert response.usage.total_tokens == 8

            stream = stub.GenerateStream(llm_pb2.GenerateRequest(prompt="abc", model="m"))
            chunks = [chunk async for chunk in stream]
            assert [chunk.text for chunk in chunks] == ["a", "b", "c"]
            assert [chunk.finish_reason for chunk in chunks] == ["", "", "length"]

            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Generate(llm_pb2.GenerateRequest(prompt="x", top_p=2.0))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "top_p" in raised.value.details()
    finally:
        await server.stop(grace=None)


def test_service_descriptor_names_what_serve_routes_on() -> None:
    service = llm_pb2.DESCRIPTOR.services_by_name["LLM"]
    assert service.full_name == "serve_app.llm.LLM"  # the proxy routes /serve_app.llm.LLM/<m>
    assert service.methods_by_name["GenerateStream"].server_streaming
    assert not service.methods_by_name["Generate"].server_streaming
