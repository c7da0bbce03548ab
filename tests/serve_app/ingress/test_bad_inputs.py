"""Bad requests get the documented status and an OpenAI-style error body, and the app keeps
serving: a valid request right after each one still succeeds."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

VALID = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def http(live_app):
    with httpx.Client(base_url=live_app.base_url, headers=live_app.headers(), timeout=60) as client:
        yield client


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def assert_still_serving(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json=VALID)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "Hi"}, "model"),  # missing field
        ({"model": "tiny"}, "prompt"),  # missing field
        ({"model": "tiny", "prompt": 42}, "prompt"),  # wrong type
        ({**VALID, "max_tokens": "many"}, "max_tokens"),  # wrong type
        ({**VALID, "prompt": ""}, "prompt"),  # empty prompt
        ({**VALID, "prompt": []}, "prompt"),
        ({**VALID, "prompt": "x" * 300}, "prompt"),  # over max_prompt_tokens (256)
        ({**VALID, "max_tokens": 0}, "max_tokens"),
        ({**VALID, "max_tokens": -3}, "max_tokens"),
        ({**VALID, "max_tokens": 2001}, "max_tokens"),  # over limits.max_tokens (2000)
        ({**VALID, "temperature": -0.5}, "temperature"),
        ({**VALID, "top_p": 0}, "top_p"),
        ({**VALID, "top_p": 1.5}, "top_p"),
        ({**VALID, "n": 0}, "n"),
        ({**VALID, "stop": [""]}, "stop"),
        ({**VALID, "min_tokens": 3}, "min_tokens"),  # more than max_tokens (2)
        ({**VALID, "prompt": [1, 2, 99999]}, None),  # token id outside the vocabulary
    ],
)
def test_invalid_completion_is_400(http, body, param):
    error = assert_error(http.post("/v1/completions", json=body), 400, param)
    assert error["type"] == "invalid_request_error"
    assert_still_serving(http)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "tiny"},
        {"model": "tiny", "messages": []},
        {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": "tiny", "messages": [{"role": "user"}]},
    ],
)
def test_invalid_chat_is_400(http, body):
    assert_error(http.post("/v1/chat/completions", json=body), 400)
    assert_still_serving(http)


def test_malformed_json_is_400(http):
    response = http.post(
        "/v1/completions",
        content=b'{"model": "tiny", "prompt": ',
        headers={"content-type": "application/json"},
    )
    assert assert_error(response, 400)["code"] == "invalid_json"
    assert_still_serving(http)


def test_unknown_model_is_404(http):
    for route, extra in [
        ("/v1/completions", {"prompt": "Hi"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
    ]:
        response = http.post(route, json={"model": "gpt-4", **extra})
        assert assert_error(response, 404, "model")["code"] == "model_not_found"
    assert_still_serving(http)


def test_unknown_route_is_404(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_still_serving(http)


def test_oversized_body_is_413(http, live_app):
    too_big = live_app.args["limits"]["max_body_bytes"] + 1
    response = http.post("/v1/completions", json={**VALID, "user": "x" * too_big})
    assert_error(response, 413)
    # Without a Content-Length (chunked upload), the limit still holds.
    chunks = iter([b'{"model": "tiny", "user": "', b"x" * too_big, b'"}'])
    assert_error(http.post("/v1/completions", content=chunks), 413)
    assert_still_serving(http)


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "Basic test-key-1", "Bearer"])
def test_invalid_api_key_is_401(live_app, http, header):
    headers = {} if header is None else {"Authorization": header}
    with httpx.Client(base_url=live_app.base_url, headers=headers, timeout=30) as anonymous:
        error = assert_error(anonymous.post("/v1/completions", json=VALID), 401)
        assert error["type"] == "authentication_error"
        assert_error(anonymous.get("/v1/models"), 401)
    assert_still_serving(http)


def test_second_key_from_the_file_works(live_app):
    with httpx.Client(
        base_url=live_app.base_url, headers={"Authorization": "Bearer second-key"}, timeout=60
    ) as other:
        assert other.post("/v1/completions", json=VALID).status_code == 200


def test_health_needs_no_key(live_app):
    assert httpx.get(live_app.base_url + "/health", timeout=30).json() == {"status": "ok"}
