"""Open-loop load generator for the OpenAI-compatible HTTP API, over SSE streaming.

Sends `POST /v1/completions` with `stream: true` and measures each request's TTFT, TPOT,
inter-token latency and end-to-end latency (definitions in bench/load_stats.py). Requests
arrive as a Poisson process at `--rate` per second (open loop: a slow server does not slow
the arrivals down) or from `--concurrency` closed-loop clients. Prompt and output lengths
are drawn uniformly from their ranges. Prints a table, saves a PNG, shows progress on stderr.

    .venv/bin/python -m bench.serve_load --url http://127.0.0.1:8000 --rate 4 \
        --num-requests 200 --prompt-len-range 16 256 --output-len-range 16 128

Prompts are random lowercase text: one byte is one token for the `tiny` and `bench`
presets' byte-level tokenizer, so the prompt lengths are in tokens there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import string
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from tqdm import tqdm

from bench.load_plot import save_plot
from bench.load_stats import LoadReport, RequestRecord, build_report, format_table


@dataclass(frozen=True, slots=True)
class WorkItem:
    prompt: str | list[int]
    prompt_len: int
    max_tokens: int


def make_workload(
    num_requests: int,
    prompt_len_range: tuple[int, int],
    output_len_range: tuple[int, int],
    seed: int,
    token_prompts: bool = False,
) -> list[WorkItem]:
    """Random prompts and output budgets, the same for the same seed."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + " "
    items = []
    for _ in range(num_requests):
        prompt_len = rng.randint(*prompt_len_range)
        prompt: str | list[int] = (
            [rng.randrange(256) for _ in range(prompt_len)]
            if token_prompts
            else "".join(rng.choice(alphabet) for _ in range(prompt_len))
        )
        items.append(WorkItem(prompt, prompt_len, rng.randint(*output_len_range)))
    return items


def poisson_send_times(num_requests: int, rate_per_s: float, seed: int) -> list[float]:
    """Offsets (s) from the start at which an open-loop client sends each request."""
    rng = random.Random(seed + 1)  # not the workload's stream: lengths stay the same per seed
    offsets, now = [], 0.0
    for _ in range(num_requests):
        offsets.append(now)
        now += rng.expovariate(rate_per_s)
    return offsets


async def send_one(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    item: WorkItem,
    headers: dict[str, str],
    logprobs: int | None = None,
) -> RequestRecord:
    """Stream one completion; every failure ends up in the record, never raised.

    `logprobs` (0 or more) makes the server send a chunk for every token, even one whose
    text is held back or empty (random-weight models emit many such tokens), so the
    measured TTFT and inter-token times are those of tokens, not of text."""
    body = {
        "model": model,
        "prompt": item.prompt,
        "max_tokens": item.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 1.0,
        "ignore_eos": True,  # an extra field: servers that know it generate max_tokens
    }
    if logprobs is not None:
        body["logprobs"] = logprobs
    record = RequestRecord(
        sent_s=time.perf_counter(), prompt_len=item.prompt_len, max_tokens=item.max_tokens
    )
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:200]
                record.error = f"HTTP {response.status_code}: {_error_message(detail)}"
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    record.finished_s = time.perf_counter()
                    break
                _read_event(json.loads(payload), record)
                if record.error:
                    return record
        if record.finished_s is None:
            record.error = "stream ended without [DONE]"
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        record.error = f"{type(error).__name__}: {error}"[:200]
    return record


def _read_event(event: dict, record: RequestRecord) -> None:
    if "error" in event:
        record.error = f"stream error: {_error_message(json.dumps(event))}"
        return
    if event.get("choices"):
        record.chunk_times_s.append(time.perf_counter())
    if event.get("usage"):
        record.output_tokens = event["usage"].get("completion_tokens")


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return text.strip()


async def run_load(args: argparse.Namespace, workload: list[WorkItem]) -> tuple[list, float]:
    """Send the workload; returns the records (in workload order) and the wall time."""
    url = args.url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    records: list[RequestRecord | None] = [None] * len(workload)
    progress = tqdm(total=len(workload), desc="requests", unit="req", file=sys.stderr)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.timeout, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def run(index: int) -> None:
            records[index] = await send_one(
                client, url, args.model, workload[index], headers, getattr(args, "logprobs", None)
            )
            progress.update(1)

        start = time.perf_counter()
        if args.rate is not None:
            tasks = []
            for index, offset in enumerate(poisson_send_times(len(workload), args.rate, args.seed)):
                await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
                tasks.append(asyncio.create_task(run(index)))
            await asyncio.gather(*tasks)
        else:
            pending = iter(range(len(workload)))

            async def client_loop() -> None:
                for index in pending:  # a shared iterator: each index is taken once
                    await run(index)

            await asyncio.gather(*(client_loop() for _ in range(args.concurrency)))
        duration = time.perf_counter() - start
    progress.close()
    return records, duration


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="Poisson arrivals per second (open loop)")
    mode.add_argument("--concurrency", type=int, help="closed-loop clients (default 4)")
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument(
        "--prompt-len-range", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--output-len-range", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX")
    )
    parser.add_argument(
        "--token-prompts",
        action="store_true",
        help="send prompts as token-id lists (ids < 256) instead of text",
    )
    parser.add_argument(
        "--logprobs",
        type=int,
        help="ask for N logprobs per token: one chunk per token, even with no text",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    parser.add_argument("--out-png", type=Path, default=Path("bench/results/serve_load.png"))
    parser.add_argument("--out-json", type=Path, help="also save the report and raw records")
    args = parser.parse_args(argv)
    if args.rate is None and args.concurrency is None:
        args.concurrency = 4
    for name, (low, high) in (
        ("--prompt-len-range", args.prompt_len_range),
        ("--output-len-range", args.output_len_range),
    ):
        if not 1 <= low <= high:
            parser.error(f"{name} must be MIN MAX with 1 <= MIN <= MAX, got {low} {high}")
    if args.rate is not None and args.rate <= 0:
        parser.error(f"--rate must be > 0, got {args.rate}")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.num_requests < 1:
        parser.error(f"--num-requests must be >= 1, got {args.num_requests}")
    return args


def main(argv: list[str] | None = None) -> LoadReport:
    args = parse_args(argv)
    workload = make_workload(
        args.num_requests,
        tuple(args.prompt_len_range),
        tuple(args.output_len_range),
        args.seed,
        args.token_prompts,
    )
    records, duration = asyncio.run(run_load(args, workload))
    report = build_report(records, duration)
    mode = f"rate {args.rate}/s" if args.rate is not None else f"concurrency {args.concurrency}"
    print(f"serve_load: {args.url} model={args.model} {mode} seed={args.seed}")
    print(format_table(report))
    save_plot(records, report, f"{args.model}, {mode}", args.out_png)
    print(f"plot: {args.out_png}")
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "report": asdict(report),
                    "records": [asdict(record) for record in records],
                },
                indent=1,
            )
        )
    return report


if __name__ == "__main__":
    main()
