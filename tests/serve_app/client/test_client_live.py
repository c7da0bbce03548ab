"""The retrying clients against the live app (the session's Serve app, HTTP and gRPC): the
app's real streams count as complete, and the text equals the unretried unary answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.client import RetryingGrpcClient, RetryingHttpClient, RetryPolicy
from serve_app.proto import llm_pb2

pytestmark = [pytest.mark.slow, pytest.mark.ray]

POLICY = RetryPolicy(total_timeout_s=120)
BODY = {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}


def test_http_completion_and_chat_streams_end_complete(live_app):
    with RetryingHttpClient(live_app.api_url, live_app.api_key, POLICY) as client:
        whole = client.post("/completions", BODY)["choices"][0]["text"]
        events = list(
            client.stream("/completions", {**BODY, "stream_options": {"include_usage": True}})
        )
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        chat_events = list(client.stream("/chat/completions", chat))
    assert "".join(c["text"] for e in events for c in e["choices"]) == whole
    assert events[-1]["usage"]["completion_tokens"] == 12
    assert chat_events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_grpc_stream_ends_complete_and_equals_unary(live_app):
    request = llm_pb2.GenerateRequest(
        model="tiny", prompt=BODY["prompt"], max_tokens=12, temperature=0
    )
    with RetryingGrpcClient(live_app.grpc_target, live_app.api_key, "llm", POLICY) as client:
        whole = client.generate(request)
        chunks = list(client.generate_stream(request))
    assert [t for c in chunks for t in c.token_ids] == list(whole.token_ids)
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].finish_reason == whole.finish_reason


def test_readme_retrying_client_example_runs(live_app):
    repo = Path(__file__).parents[3]
    readme = (repo / "README.md").read_text()
    section = readme.split("## Retrying client", 1)[1].split("\n## ", 1)[0]
    [script] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    grpc_address = live_app.grpc_target
    script = script.replace("http://127.0.0.1:8000", live_app.base_url).replace(
        "127.0.0.1:9000", grpc_address
    )
    env = {**os.environ, "OPENAI_API_KEY": live_app.api_key}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=repo,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")
