"""Side by side, in one run: the engine in-process (offline), the Serve graph with the
micro-batcher, and the graph with the batcher off, on the same workload per model.

For each `--models` entry: (1) an AsyncEngine in this process runs the workload from
`--concurrency` closed-loop clients (saturation) and then one request at a time; (2) a
local Ray + Serve on a free loopback port runs serve_app.app:build_app with the batcher on,
measured by bench/serve_load.py's client over HTTP/SSE with the same two loads; (3) the
same with `batcher.enabled=false`. Every system uses the same engine settings, the same
token-id prompts and output lengths, ignore_eos and temperature 1.0, so the work is
identical. Every system is asked for logprobs=0, so the HTTP stream carries one chunk per
token even when the random-weight model's token has no text (most of the `bench` preset's
32000 ids decode to nothing): TTFT and TPOT are token times on every row. Prints one
table per model and the issue-6 target checks (bench/compare_report.py).

    .venv/bin/python -m bench.serve_compare --models tiny bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.compare_report import (
    GRAPH_BATCHER,
    GRAPH_DIRECT,
    OFFLINE,
    SystemResult,
    format_comparison,
)
from bench.load_stats import LoadReport, RequestRecord, build_report
from bench.serve_load import WorkItem, make_workload, run_load
from serve_app.engine.async_engine import AsyncEngine
from serve_app.engine.config import EngineConfig
from serve_app.engine.sampling_params import SamplingParams

APP_NAME = "serve_compare"
WARMUP_REQUESTS = 8
LOGPROBS = 0  # the chosen token's logprob only: a chunk per token over HTTP too


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "bench"])
    parser.add_argument("--concurrency", type=int, default=32, help="saturation clients")
    parser.add_argument("--saturation-requests", type=int, default=96)
    parser.add_argument("--single-requests", type=int, default=30, help="at concurrency 1")
    parser.add_argument("--prompt-len-range", type=int, nargs=2, default=(16, 128))
    parser.add_argument("--output-len-range", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--single-output-len", type=int, default=16)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--kv-cache-mib", type=int, default=128)
    parser.add_argument("--replica-cpus", type=float, default=2.0, help="torch threads too")
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="the served app's replica.stream_interval_tokens (tokens per streamed message)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def engine_settings(args: argparse.Namespace) -> dict:
    """The engine knobs every system shares (offline EngineConfig and the app's `engine`)."""
    return {"max_num_seqs": args.max_num_seqs, "kv_cache_memory_bytes": args.kv_cache_mib << 20}


def workloads(args: argparse.Namespace) -> tuple[list[WorkItem], list[WorkItem]]:
    """(saturation, one-at-a-time): token-id prompts, identical for every system."""
    saturation = make_workload(
        args.saturation_requests,
        tuple(args.prompt_len_range),
        tuple(args.output_len_range),
        args.seed,
        token_prompts=True,
    )
    length = (args.single_output_len, args.single_output_len)
    single = make_workload(
        args.single_requests, tuple(args.prompt_len_range), length, args.seed + 7, True
    )
    return saturation, single


def sampling_params(item: WorkItem) -> SamplingParams:
    """What the ingress builds from serve_load's request body."""
    return SamplingParams(
        max_tokens=item.max_tokens, temperature=1.0, ignore_eos=True, logprobs=LOGPROBS
    )


# ---- offline ------------------------------------------------------------------------------
async def _engine_one(engine: AsyncEngine, item: WorkItem) -> RequestRecord:
    assert isinstance(item.prompt, list)
    record = RequestRecord(time.perf_counter(), item.prompt_len, item.max_tokens)
    try:
        async for output in engine.generate(item.prompt, sampling_params(item)):
            if output.new_token_ids:
                record.chunk_times_s.append(time.perf_counter())
            if output.finished:
                record.output_tokens = output.num_output_tokens
        record.finished_s = time.perf_counter()
    except Exception as error:  # a failure is a record, as in serve_load
        record.error = f"{type(error).__name__}: {error}"[:200]
    return record


async def _engine_load(
    engine: AsyncEngine, workload: list[WorkItem], concurrency: int
) -> LoadReport:
    records: list[RequestRecord | None] = [None] * len(workload)
    pending = iter(range(len(workload)))

    async def client_loop() -> None:
        for index in pending:  # a shared iterator: each index is taken once
            records[index] = await _engine_one(engine, workload[index])

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return build_report(records, time.perf_counter() - start)


def run_offline(args, model, saturation, single) -> SystemResult:
    torch.set_num_threads(max(1, int(args.replica_cpus)))
    engine = AsyncEngine(EngineConfig(model=model, **engine_settings(args)))
    try:

        async def measure() -> tuple[LoadReport, LoadReport]:
            await _engine_load(engine, saturation[:WARMUP_REQUESTS], WARMUP_REQUESTS)
            return (
                await _engine_load(engine, saturation, args.concurrency),
                await _engine_load(engine, single, 1),
            )

        sat, one = asyncio.run(measure())
    finally:
        engine.shutdown()
    return SystemResult(OFFLINE, sat, one)


# ---- served -------------------------------------------------------------------------------
def app_args(args: argparse.Namespace, model: str, batcher: bool) -> dict:
    limit = 4 * args.concurrency
    return {
        "model": model,
        "engine": engine_settings(args),
        "replica": {
            "num_cpus": args.replica_cpus,
            "max_ongoing_requests": limit,
            "max_queued_requests": limit,
            "stream_interval_tokens": args.stream_interval,
        },
        "ingress": {"num_cpus": 0.25},
        "batcher": {"enabled": batcher, "num_cpus": 0.25, "max_ongoing_requests": limit},
        "limits": {"max_prompt_tokens": 4096, "max_tokens": 4096},
        "auth": {"api_keys_env": None},
    }


def load_client(port: int, model: str, concurrency: int) -> argparse.Namespace:
    """bench/serve_load.py's client settings for the local app on `port`."""
    return argparse.Namespace(
        url=f"http://127.0.0.1:{port}",
        model=model,
        api_key=None,
        rate=None,
        timeout=300.0,
        logprobs=LOGPROBS,
        concurrency=concurrency,
    )


def run_served(args, model, port, batcher, saturation, single) -> SystemResult:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(app_args(args, model, batcher)), name=APP_NAME, route_prefix="/")
    try:
        client = load_client(port, model, WARMUP_REQUESTS)

        async def measure() -> tuple[LoadReport, LoadReport]:
            await run_load(client, saturation[:WARMUP_REQUESTS])
            reports = []
            for workload, concurrency in ((saturation, args.concurrency), (single, 1)):
                client.concurrency = concurrency
                records, duration = await run_load(client, workload)
                reports.append(build_report(records, duration))
            return reports[0], reports[1]

        sat, one = asyncio.run(measure())
    finally:
        serve.delete(APP_NAME)
    name = GRAPH_BATCHER if batcher else GRAPH_DIRECT
    if args.stream_interval > 1:
        name += f" (stream interval {args.stream_interval})"
    return SystemResult(name, sat, one)


def start_serve() -> int:
    import ray
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=256 << 20,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def stop_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = "python -m bench.serve_compare " + " ".join(argv if argv else sys.argv[1:])
    print(f"# {command.strip()}")
    print(f"# {vars(args)}")
    started = time.perf_counter()
    offline: dict[str, SystemResult] = {}
    for model in args.models:
        saturation, single = workloads(args)
        print(f"# {model}: offline ... load average {os.getloadavg()}", flush=True)
        offline[model] = run_offline(args, model, saturation, single)
    port = start_serve()
    try:
        for model in args.models:
            saturation, single = workloads(args)
            served = []
            for batcher in (True, False):
                print(f"# {model}: batcher={batcher} ... load average {os.getloadavg()}")
                served.append(run_served(args, model, port, batcher, saturation, single))
            print(f"\n## {model}  (load average at the end {os.getloadavg()})\n")
            print(format_comparison(offline[model], served[0], served[1]), flush=True)
    finally:
        stop_serve()
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
