"""bench/serve_load.py end to end against a stand-in SSE server with known delays.

This tests the load generator, not the app: the stand-in streams fake completions with a
fixed time to first token and a fixed gap between tokens, fails every fourth request with
503, and records what it was sent; the measured latencies must match the known delays.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bench.serve_load import main, make_workload, parse_args, poisson_send_times

FIRST_TOKEN_DELAY_S = 0.15
TOKEN_GAP_S = 0.03
FAIL_EVERY = 4


def stand_in_app(received: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        received.append(body)
        if len(received) % FAIL_EVERY == 0:
            error = {"error": {"message": "draining", "type": "unavailable", "code": 503}}
            return JSONResponse(error, status_code=503)

        async def events():
            await asyncio.sleep(FIRST_TOKEN_DELAY_S)
            for index in range(body["max_tokens"]):
                if index:
                    await asyncio.sleep(TOKEN_GAP_S)
                chunk = {"choices": [{"index": 0, "text": "x", "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def stand_in_server() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(stand_in_app(received), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            threading.Event().wait(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", received
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


def test_measured_latencies_match_the_known_delays(stand_in_server, tmp_path: Path, capsys):
    url, received = stand_in_server
    png = tmp_path / "load.png"
    args = ["--url", url, "--model", "stand-in", "--concurrency", "4", "--num-requests", "12"]
    args += ["--prompt-len-range", "10", "20", "--output-len-range", "6", "6"]
    args += ["--seed", "3", "--out-png", str(png), "--out-json", str(tmp_path / "load.json")]
    report = main(args)

    assert (report.num_requests, report.num_ok, report.num_errors) == (12, 9, 3)
    assert report.errors == {"HTTP 503: draining": 3}
    # sleeps never end early; on a busy 2-core box they may end a little late
    assert FIRST_TOKEN_DELAY_S <= report.ttft.mean < FIRST_TOKEN_DELAY_S + 0.06
    assert TOKEN_GAP_S <= report.tpot.mean < TOKEN_GAP_S + 0.015
    assert TOKEN_GAP_S <= report.itl.p50 < TOKEN_GAP_S + 0.015
    assert report.itl.count == 9 * 5
    expected_e2e = FIRST_TOKEN_DELAY_S + 5 * TOKEN_GAP_S
    assert expected_e2e <= report.e2e.mean < expected_e2e + 0.1
    assert report.output_token_throughput == pytest.approx(9 * 6 / report.duration_s, rel=1e-9)

    assert all(
        body["stream"] and body["stream_options"] == {"include_usage": True} for body in received
    )
    assert {body["model"] for body in received} == {"stand-in"}
    assert {body["max_tokens"] for body in received} == {6}
    assert all(10 <= len(body["prompt"]) <= 20 and body["ignore_eos"] for body in received)
    assert not any("logprobs" in body for body in received)  # only when asked for

    out = capsys.readouterr().out
    assert "TTFT (ms)" in out and "9 ok, 3 failed, of 12" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "load.json").read_text())
    assert len(saved["records"]) == 12


def test_poisson_mode_sends_open_loop(stand_in_server, tmp_path: Path):
    url, received = stand_in_server
    args = ["--url", url, "--rate", "50", "--num-requests", "6", "--output-len-range", "2", "3"]
    args += [
        "--token-prompts",
        "--logprobs",
        "0",
        "--prompt-len-range",
        "4",
        "4",
        "--out-png",
        str(tmp_path / "p.png"),
    ]
    report = main(args)
    assert report.num_requests == 6 and report.num_errors == 6 // FAIL_EVERY
    assert all(body["prompt"] and all(0 <= t < 256 for t in body["prompt"]) for body in received)
    assert [body["logprobs"] for body in received] == [0] * 6
    # open loop: the six requests overlap, so the run is far shorter than six in a row
    assert report.duration_s < 6 * FIRST_TOKEN_DELAY_S


def test_workload_and_arrivals_are_seeded() -> None:
    first = make_workload(50, (5, 9), (1, 3), seed=7)
    assert first == make_workload(50, (5, 9), (1, 3), seed=7)
    assert first != make_workload(50, (5, 9), (1, 3), seed=8)
    assert all(5 <= len(item.prompt) == item.prompt_len <= 9 for item in first)
    assert {item.max_tokens for item in first} == {1, 2, 3}
    offsets = poisson_send_times(4000, rate_per_s=20.0, seed=0)
    assert offsets[0] == 0.0 and offsets == sorted(offsets)
    assert offsets[-1] / len(offsets) == pytest.approx(1 / 20.0, rel=0.05)  # mean gap


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "0"], "--rate must be > 0"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--prompt-len-range", "9", "3"], "--prompt-len-range must be MIN MAX"),
        (["--num-requests", "0"], "--num-requests must be >= 1"),
        (["--rate", "2", "--concurrency", "2"], "not allowed with argument"),
    ],
)
def test_bad_arguments_are_refused_by_name(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_default_mode_is_four_closed_loop_clients() -> None:
    args = parse_args([])
    assert (args.rate, args.concurrency) == (None, 4)
