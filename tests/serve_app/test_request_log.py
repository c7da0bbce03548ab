"""Request logs: the redaction rules, the JSON line of a trace, and the lines a live app
writes for a success, a 400, a 429 and a client that disconnects."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from serve_app.config import RequestLogSettings
from serve_app.ingress.text_stream import TextDelta
from serve_app.log_digest import cluster_salt, digest
from serve_app.redaction import API_KEY_TAG, DIGITS_TAG, EMAIL_TAG, Redactor, token_ids_tag
from serve_app.request_log import DISCONNECTED_STATUS, RequestLog, RequestTrace

CONFIGURED_KEY = "test-key-1"  # the session app's key (tests/serve_app/conftest.py)
SECRETS = {
    "jane.doe+llm@example.co.uk": EMAIL_TAG,
    "sk-proj-9f8e7d6c5b4a39281706": API_KEY_TAG,
    "ghp3xZ8vQ1rT6yU2iO4pA7sD9fG0hJ5k": API_KEY_TAG,  # generic mixed token
    "4111 1111 1111 1111": DIGITS_TAG,
    "+1 415-555-0134": DIGITS_TAG,
    "DE89370400440532013000": DIGITS_TAG,  # an IBAN: its digits go
    CONFIGURED_KEY: API_KEY_TAG,
}
PLANTED = (
    "Mail jane.doe+llm@example.co.uk, key sk-proj-9f8e7d6c5b4a39281706, token"
    " ghp3xZ8vQ1rT6yU2iO4pA7sD9fG0hJ5k, card 4111 1111 1111 1111, phone +1 415-555-0134,"
    " IBAN DE89370400440532013000, our key test-key-1 and Authorization: Bearer abc.def"
)


def test_redaction_removes_every_planted_secret_and_keeps_the_text_readable():
    redacted = Redactor.with_secrets([CONFIGURED_KEY]).redact(PLANTED)
    for secret, tag in SECRETS.items():
        assert secret not in redacted
        assert tag in redacted
    assert "abc.def" not in redacted and "Bearer [API_KEY]" in redacted
    for kept in ("Mail", "card", "phone", "our key", "and Authorization:"):
        assert kept in redacted
    assert Redactor().redact("In 2026, 42 cats ate 1234567 fish.") == (
        "In 2026, 42 cats ate 1234567 fish."  # short numbers and plain words stay
    )


def delta(index: int, num_output_tokens: int, token_ids: list[int], text: str = "x", **kw):
    return TextDelta(index, text, 3, num_output_tokens, token_ids=token_ids, **kw)


def test_trace_times_first_token_gaps_and_time_per_output_token():
    trace = RequestTrace("/v1/completions", "tiny", keep_text=True)
    trace.started_s -= 0.5  # arrived half a second ago
    trace.on_delta(delta(0, 1, [5], "He"))
    trace.on_delta(delta(0, 2, [], ""))  # text held back: no token, no gap
    trace.on_delta(delta(0, 3, [6, 7], "llo", finish_reason="length"))
    trace.finish(200)
    assert trace.ttft_s is not None and trace.ttft_s >= 0.5
    assert len(trace.token_gaps_s) == 1
    assert trace.output_tokens == 3
    assert trace.tpot_s == pytest.approx((trace.last_token_s - trace.first_token_s) / 2)
    assert trace.output_text == ["Hello"]
    assert trace.finish_reasons == {0: "length"}


def test_line_leaves_text_out_by_default_and_redacts_it_when_on():
    for include_text in (False, True):
        log = RequestLog(
            RequestLogSettings(include_text=include_text, max_text_chars=4096),
            secrets=[CONFIGURED_KEY],
            salt=b"s",
        )
        trace = log.trace(
            "/v1/completions",
            "tiny",
            {"idempotency-key": "retry-7", "authorization": "Bearer header-key-5"},
        )
        trace.set_prompt(PLANTED)
        trace.on_delta(delta(0, 1, [1], "reply to jane.doe+llm@example.co.uk"))
        trace.finish(200)
        line = json.loads(log.line(trace))
        assert "retry-7" not in json.dumps(line)  # the key: only its digest
        assert "header-key-5" not in json.dumps(line)  # headers are never logged
        if not include_text:
            assert "prompt" not in line and "output" not in line
            continue
        for secret in SECRETS:
            assert secret not in json.dumps(line)
        assert EMAIL_TAG in line["prompt"] and line["output"] == [f"reply to {EMAIL_TAG}"]


def test_idempotency_key_is_logged_as_a_salted_digest_never_the_key():
    def logged(key: str, salt: bytes) -> str:
        log = RequestLog(RequestLogSettings(), salt=salt)
        trace = log.trace("/v1/completions", "tiny", {"idempotency-key": key})
        trace.finish(200)
        text = log.line(trace)
        assert key not in text and 'idempotency_key"' not in text
        return json.loads(text)["idempotency_key_digest"]

    first = logged("order-42", b"salt-a")
    assert len(first) == 16 and int(first, 16) >= 0
    assert logged("order-42", b"salt-a") == first  # a call's attempts: one digest
    assert logged("order-43", b"salt-a") != first
    assert logged("order-42", b"salt-b") != first  # a guess cannot be checked without it
    no_key = RequestLog(RequestLogSettings(), salt=b"s").trace("/v1/completions", "tiny", {})
    assert no_key.idempotency_key_digest is None


def test_token_id_prompts_are_logged_as_their_count_not_the_ids():
    """Token ids decode straight back to the text that redaction masks."""
    ids = [19, 4111, 1111, 1111, 1111, 88]
    log = RequestLog(RequestLogSettings(include_text=True, max_text_chars=4096), salt=b"s")
    expected = {
        "prompt": ids,
        "batch": [ids, [5, 6]],
        "mixed": ["card 4111 1111 1111 1111", ids],
    }
    for name, prompt in expected.items():
        trace = log.trace("/v1/completions", "tiny", {})
        trace.set_prompt(prompt)
        logged = json.loads(log.line(trace))["prompt"]
        assert "4111" not in logged and "19, 4111" not in logged, (name, logged)
        assert token_ids_tag(len(ids)) in logged, (name, logged)
    assert logged == json.dumps(["card " + DIGITS_TAG, token_ids_tag(6)])


def test_text_is_cut_after_redaction():
    log = RequestLog(RequestLogSettings(include_text=True, max_text_chars=12), salt=b"s")
    trace = log.trace("/v1/completions", "tiny", {})
    trace.set_prompt("mail a.very.long.address@example.com now")
    assert json.loads(log.line(trace))["prompt"] == "mail [EMAIL]"


# ---- a live app writing its request log to a file (conftest's small_app) -----------------


def http_lines(log_file: Path) -> list[dict]:
    """The file's lines for HTTP completions (the app also serves another test's gRPC)."""
    lines = log_file.read_text().splitlines() if log_file.exists() else []
    return [line for line in map(json.loads, lines) if line["route"] == "/v1/completions"]


def read_lines(log_file: Path, after: int, count: int, timeout_s: float = 60) -> list[dict]:
    """The `count` HTTP lines written after the first `after` (fewer at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = http_lines(log_file)[after:]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


async def slow_streams(url: str, headers: dict, count: int) -> list[int]:
    body = {"model": "tiny", "prompt": "slow", "max_tokens": 300, "ignore_eos": True}
    async with httpx.AsyncClient(headers=headers, timeout=120) as client:

        async def one() -> int:
            async with client.stream(
                "POST", url + "/completions", json={**body, "stream": True}
            ) as response:
                await response.aread()
                return response.status_code

        return await asyncio.gather(*(one() for _ in range(count)))


@pytest.mark.slow
@pytest.mark.ray
def test_live_lines_for_success_400_429_and_disconnect(live_app, small_app, tokenizer):
    url, log_file = small_app.api_url, small_app.request_log
    headers = live_app.headers()
    before = len(http_lines(log_file))
    ok = httpx.post(
        url + "/completions",
        headers={**headers, "Idempotency-Key": "order-42"},
        json={"model": "tiny", "prompt": PLANTED, "max_tokens": 4, "ignore_eos": True},
        timeout=60,
    )
    assert ok.status_code == 200
    planted_ids = tokenizer(PLANTED).input_ids  # decode straight back to the secrets
    as_ids = httpx.post(
        url + "/completions",
        headers=headers,
        json={"model": "tiny", "prompt": planted_ids, "max_tokens": 1},
        timeout=60,
    )
    assert as_ids.status_code == 200
    bad = httpx.post(
        url + "/completions",
        headers=headers,
        json={"model": "tiny", "prompt": "x", "temperature": -1},
        timeout=60,
    )
    assert bad.status_code == 400
    statuses = asyncio.run(slow_streams(url, headers, 6))
    assert 429 in statuses, statuses
    body = {"model": "tiny", "prompt": "leave", "max_tokens": 500, "ignore_eos": True}
    with (
        httpx.Client(headers=headers, timeout=60) as client,
        client.stream("POST", url + "/completions", json={**body, "stream": True}) as stream,
    ):
        next(stream.iter_lines())  # the first event arrived; now the client leaves
    lines = read_lines(log_file, before, 4 + len(statuses))
    [ids_line] = [line for line in lines if line["prompt"] == token_ids_tag(len(planted_ids))]
    by_status = {}
    for line in lines:
        if line is ids_line:
            continue
        by_status.setdefault(line["status"], line)
    for status in (200, 400, 429, DISCONNECTED_STATUS):
        print(json.dumps(by_status.get(status)))  # the evidence: one line of each
    success, invalid, shed = by_status[200], by_status[400], by_status[429]
    disconnected = by_status[DISCONNECTED_STATUS]

    # Not the key: its digest under the cluster's salt, read in a task on the session's
    # cluster (this process's own internal-KV client may point at another test's cluster).
    import ray

    salt = ray.get(ray.remote(cluster_salt).remote())
    assert success["idempotency_key_digest"] == digest("order-42", salt)
    assert success["error_code"] is None
    assert success["prompt_tokens"] > 0 and success["output_tokens"] == 4
    assert 0 < success["ttft_s"] <= success["e2e_s"] and success["request_id"]
    assert success["response_id"].startswith("cmpl-") and success["model"] == "tiny"
    assert invalid["error_code"] == "invalid_value" and invalid["output_tokens"] == 0
    assert shed["error_code"] == "overloaded"
    assert disconnected["error_code"] == "client_disconnected"
    assert 0 < disconnected["output_tokens"] < 500
    text = log_file.read_text()
    for secret in SECRETS:  # the configured API key included: never logged
        assert secret not in text
    assert "order-42" not in text and str(planted_ids[1:4])[1:-1] not in text
    assert EMAIL_TAG in success["prompt"] and DIGITS_TAG in success["prompt"]
