"""The live app through Serve's gRPC proxy with the generated stubs: greedy output equal to
the engine's and to HTTP's, streaming equal to unary, gRPC and HTTP at the same time, and
the status codes of bad, unauthenticated, unknown-model and overloading calls."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from serve_app.engine.sampling_params import SamplingParams
from serve_app.proto import llm_pb2, llm_pb2_grpc
from tests.serve_app.replica_idle import wait_for_idle

pytestmark = [pytest.mark.slow, pytest.mark.ray]

PROMPT = "The quick brown fox"
APP_NAME = "llm"  # conftest.APP_NAME: the `application` metadata routes to it


@pytest.fixture(scope="module")
def channel(live_app):
    with grpc.insecure_channel(live_app.grpc_target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> llm_pb2_grpc.LLMStub:
    return llm_pb2_grpc.LLMStub(channel)


def metadata(key: str | None, application: str = APP_NAME) -> list[tuple[str, str]]:
    pairs = [("application", application)]
    return pairs + ([("authorization", f"Bearer {key}")] if key is not None else [])


def generate(stub, live_app, **fields) -> llm_pb2.GenerateResponse:
    request = llm_pb2.GenerateRequest(**fields)
    return stub.Generate(request, metadata=metadata(live_app.api_key), timeout=60)


def generate_stream(stub, live_app, **fields) -> list[llm_pb2.GenerateChunk]:
    request = llm_pb2.GenerateRequest(**fields)
    return list(stub.GenerateStream(request, metadata=metadata(live_app.api_key), timeout=60))


def http_text(live_app, **body) -> dict:
    response = httpx.post(
        live_app.api_url + "/completions",
        json={"model": "tiny", **body},
        headers=live_app.headers(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_unary_greedy_equals_engine_and_http(stub, live_app, engine, tokenizer):
    prompt_ids = tokenizer.encode(PROMPT)
    [expected] = engine.generate([prompt_ids], SamplingParams(12, temperature=0))
    response = generate(stub, live_app, model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert list(response.token_ids) == expected
    assert response.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert response.model == "tiny" and response.id.startswith("cmpl-")
    assert response.finish_reason == ("length" if len(expected) == 12 else "stop")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (
        len(prompt_ids),
        len(expected),
    )
    assert response.usage.total_tokens == len(prompt_ids) + len(expected)

    over_http = http_text(live_app, prompt=PROMPT, max_tokens=12, temperature=0)
    assert over_http["choices"][0]["text"] == response.text
    assert over_http["usage"]["completion_tokens"] == response.usage.completion_tokens

    # Empty model = the served model; token ids as the prompt give the same result.
    by_ids = generate(stub, live_app, prompt_token_ids=prompt_ids, max_tokens=12, temperature=0)
    assert (list(by_ids.token_ids), by_ids.text) == (expected, response.text)


def test_stream_yields_the_unary_tokens_and_text(stub, live_app):
    fields = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0}
    unary = generate(stub, live_app, **fields)
    chunks = generate_stream(stub, live_app, **fields)
    assert len(chunks) > 1
    assert [token for chunk in chunks for token in chunk.token_ids] == list(unary.token_ids)
    assert "".join(chunk.text for chunk in chunks) == unary.text
    assert [chunk.finish_reason for chunk in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert not any(chunk.HasField("usage") for chunk in chunks[:-1])
    assert chunks[-1].finish_reason == unary.finish_reason
    assert chunks[-1].usage == unary.usage
    assert len({chunk.id for chunk in chunks}) == 1


def test_stop_string_seed_and_penalties_match_http(stub, live_app):
    greedy = generate(stub, live_app, prompt=PROMPT, max_tokens=16, temperature=0)
    stop = greedy.text[len(greedy.text) // 2 :][:3]
    assert stop.strip(), f"the greedy text {greedy.text!r} must give a stop string"
    fields = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stop": [stop]}
    stopped = generate(stub, live_app, **fields)
    assert stopped.finish_reason == "stop"
    assert stopped.text == greedy.text[: greedy.text.index(stop)]
    assert stopped.text == http_text(live_app, **fields)["choices"][0]["text"]

    sampled = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0.9, "seed": 7}
    sampled |= {"top_k": 50, "repetition_penalty": 1.3, "presence_penalty": 0.5}
    once = generate(stub, live_app, **sampled)
    assert once.text == generate(stub, live_app, **sampled).text
    assert once.text == http_text(live_app, **sampled)["choices"][0]["text"]


def test_logprobs_match_http_and_the_stream(stub, live_app):
    fields = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 2}
    unary = generate(stub, live_app, **fields)
    assert [entry.token_id for entry in unary.logprobs] == list(unary.token_ids)
    for entry in unary.logprobs:  # greedy: the sampled token is the top one
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(max(entry.top_logprobs.values()))
        assert entry.top_logprobs[entry.token_id] == pytest.approx(entry.logprob)
    over_http = http_text(live_app, **fields)["choices"][0]["logprobs"]["token_logprobs"]
    assert [entry.logprob for entry in unary.logprobs] == pytest.approx(over_http, abs=1e-5)
    chunks = generate_stream(stub, live_app, **fields)
    assert [entry for chunk in chunks for entry in chunk.logprobs] == list(unary.logprobs)
    assert not generate(stub, live_app, **(fields | {"logprobs": None})).logprobs


def test_concurrent_http_and_grpc_all_give_engine_greedy(stub, live_app, engine, tokenizer) -> None:
    prompts = [f"Request number {i} says" for i in range(6)]
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    expected = engine.generate(prompt_ids, SamplingParams(10, temperature=0))

    def run(index: int) -> list[int]:
        fields = {"prompt": prompts[index], "max_tokens": 10, "temperature": 0}
        if index % 3 == 0:
            return list(generate(stub, live_app, **fields).token_ids)
        if index % 3 == 1:
            chunks = generate_stream(stub, live_app, **fields)
            return [token for chunk in chunks for token in chunk.token_ids]
        text = http_text(live_app, **fields)["choices"][0]["text"]
        return tokenizer.encode(text, add_special_tokens=False)

    with ThreadPoolExecutor(len(prompts)) as pool:
        outputs = list(pool.map(run, range(len(prompts))))
    for index, output in enumerate(outputs):
        if index % 3 == 2:  # HTTP returns text: compare decoded
            want = tokenizer.decode(expected[index], skip_special_tokens=True)
            assert tokenizer.decode(output) == want, index
        else:
            assert output == expected[index], index


def test_cancelled_stream_frees_the_replica(stub, live_app, replica_handle):
    """Ray Serve 2.60's gRPC proxy loses a client cancel that lands while it is yielding a
    chunk (the GeneratorExit never cancels the replica call), so one try can miss through
    no fault of ours: the cancel must free the replica within 5 s in one of three tries."""
    hold = llm_pb2.GenerateRequest(prompt="a long story", max_tokens=2000, ignore_eos=True)
    outcomes = []
    for _ in range(3):
        assert wait_for_idle(replica_handle, timeout_s=60)["num_running"] == 0
        call = stub.GenerateStream(hold, metadata=metadata(live_app.api_key), timeout=60)
        assert sum(len(next(call).token_ids) for _ in range(3)) >= 3
        during = replica_handle.stats.remote().result()
        assert during["num_running"] == 1 and during["num_used_kv_blocks"] > 0
        call.cancel()  # after a few chunks of a 2000-token request (seconds of work)
        stats = wait_for_idle(replica_handle, timeout_s=5)
        outcomes.append(stats)
        if stats["num_running"] == 0 and stats["num_used_kv_blocks"] == 0:
            return
    raise AssertionError(f"no cancelled request was freed within 5 s: {outcomes}")


def expect_error(call, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if not isinstance(result, llm_pb2.GenerateResponse):
            list(result)  # a stream fails when read
    assert caught.value.code() == code, caught.value.details()
    return caught.value


BAD_REQUESTS = [
    ({}, "prompt"),
    ({"prompt": "x", "prompt_token_ids": [1, 2]}, "prompt"),
    ({"prompt": "x", "temperature": 5.0}, "temperature"),
    ({"prompt": "x", "top_p": 0.0}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 5000}, "max_tokens"),  # over limits.max_tokens
    ({"prompt": "x", "seed": 2**63}, "seed"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),  # over max_stop_strings
    ({"prompt_token_ids": [5] * 300}, "prompt"),  # over limits.max_prompt_tokens
    ({"prompt_token_ids": [10**6]}, "prompt"),  # outside the vocabulary: the engine refuses
]


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("fields", "field_name"), BAD_REQUESTS)
def test_bad_requests_are_invalid_argument_naming_the_field(
    stub, live_app, fields, field_name, streaming
):
    method = stub.GenerateStream if streaming else stub.Generate
    request = llm_pb2.GenerateRequest(**fields)
    error = expect_error(
        lambda: method(request, metadata=metadata(live_app.api_key), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_name in error.details()


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_key_is_unauthenticated(stub, live_app, key):
    request = llm_pb2.GenerateRequest(prompt="x", max_tokens=2)
    for method in (stub.Generate, stub.GenerateStream):
        error = expect_error(
            lambda m=method: m(request, metadata=metadata(key), timeout=30),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        assert "API key" in error.details()


def test_unknown_model_is_not_found(stub, live_app):
    request = llm_pb2.GenerateRequest(model="gpt-9", prompt="x", max_tokens=2)
    for method in (stub.Generate, stub.GenerateStream):
        error = expect_error(
            lambda m=method: m(request, metadata=metadata(live_app.api_key), timeout=30),
            grpc.StatusCode.NOT_FOUND,
        )
        assert "gpt-9" in error.details()


def test_full_replica_gives_resource_exhausted_with_retry_after(stub, live_app, small_app):
    """One long stream runs; of two more calls one is queued and one refused, whichever
    comes second (nothing finishes meanwhile); a later call is refused as well."""
    tight = metadata(live_app.api_key, small_app.name)
    hold = llm_pb2.GenerateRequest(prompt="hold", max_tokens=2000, ignore_eos=True)
    probe = llm_pb2.GenerateRequest(prompt="one more", max_tokens=2)
    retry_after = str(live_app.args["limits"]["retry_after_s"])
    running = stub.GenerateStream(hold, metadata=tight, timeout=120)
    calls = []
    try:
        assert next(running).token_ids  # the replica's one slot is taken
        calls = [stub.Generate.future(r, metadata=tight, timeout=120) for r in (hold, probe)]
        deadline = time.monotonic() + 30
        while not any(call.done() for call in calls):  # grpc futures: no concurrent wait()
            assert time.monotonic() < deadline, "neither call was refused"
            time.sleep(0.05)
        [refused] = [call for call in calls if call.done()]
        error = refused.exception()
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert ("retry-after", retry_after) in error.trailing_metadata()
        assert f"retry after {retry_after} s" in error.details()

        error = expect_error(
            lambda: stub.GenerateStream(probe, metadata=tight, timeout=30),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert f"retry after {retry_after} s" in error.details()
        assert sum(call.done() for call in calls) == 1  # the other one is still queued
    finally:
        running.cancel()
        for call in calls:
            call.cancel()


def test_readme_grpc_example_works(live_app):
    """The README's gRPC client, run as written (only the port differs)."""
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = readme.split("## gRPC API", 1)[1].split("\n## ", 1)[0]
    [script] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert "127.0.0.1:9000" in script
    done = subprocess.run(
        [sys.executable, "-c", script.replace("127.0.0.1:9000", live_app.grpc_target)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OPENAI_API_KEY": live_app.api_key},
        cwd=Path(__file__).parents[3],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("StatusCode.INVALID_ARGUMENT top_p"), lines
    assert lines[0].endswith(("stop", "length")), lines
