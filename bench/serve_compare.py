"""Side by side, in one run: the engine in-process, the Serve graph with the micro-batcher,
and the graph with the batcher off, on the same workload per model, with the CPU each
process spends per output token.

For each `--models` entry: (1) an AsyncEngine in this process runs workload W (by default
128 streams sent at once: prompts of 16-256 random token ids, 16-128 output tokens,
ignore_eos, greedy) and then one request at a time; (2) a local Ray + Serve on a free
loopback port runs serve_app.app:build_app in its DEFAULT config (only the model, the
engine settings shared with (1) and the replica's CPUs are set: admission and Serve limits
are the defaults), driven by bench/serve_load.py's client over HTTP/SSE with the same two
loads; (3) the same with `batcher.enabled=false`. Every system is asked for logprobs=0,
so the HTTP stream carries one chunk per token even when the random-weight model's token
has no text: TTFT and ITL are token times on every row. During each W run, every
process's CPU time is read from /proc (bench/process_cpu.py). Prints two tables per
model and the target checks (bench/compare_report.py).

    .venv/bin/python -m bench.serve_compare --models bench tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench import process_cpu
from bench.compare_report import (
    GRAPH_BATCHER,
    GRAPH_DIRECT,
    OFFLINE,
    SystemResult,
    format_comparison,
    summary,
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
    parser.add_argument("--models", nargs="+", default=["bench", "tiny"])
    parser.add_argument("--concurrency", type=int, default=128, help="W: concurrent streams")
    parser.add_argument("--saturation-requests", type=int, default=128, help="W: requests")
    parser.add_argument("--single-requests", type=int, default=30, help="at concurrency 1")
    parser.add_argument("--prompt-len-range", type=int, nargs=2, default=(16, 256))
    parser.add_argument("--output-len-range", type=int, nargs=2, default=(16, 128))
    parser.add_argument("--single-output-len", type=int, default=32)
    parser.add_argument("--replica-cpus", type=float, default=2.0, help="torch threads too")
    parser.add_argument(
        "--app-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra app arg for the served systems (e.g. replica.stream_interval_tokens=4)",
    )
    parser.add_argument(
        "--serve-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for Ray and Serve's processes (a Serve lever, e.g. "
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0)",
    )
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="Serve's direct ingress: the ingress replica serves HTTP itself, no proxy hop",
    )
    parser.add_argument(
        "--haproxy",
        action="store_true",
        help="Serve's HAProxy mode: HAProxy in front of direct-ingress ingress replicas "
        "(needs the haproxy binary; Serve then binds every interface)",
    )
    parser.add_argument("--json", help="also write each model's figures to this file")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def engine_settings(args: argparse.Namespace) -> dict:
    """The engine knobs every system shares: the defaults (EngineConfig)."""
    return {}


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
        max_tokens=item.max_tokens, temperature=0.0, ignore_eos=True, logprobs=LOGPROBS
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

        async def measure() -> tuple[LoadReport, LoadReport, dict[str, float]]:
            await _engine_load(engine, saturation[:WARMUP_REQUESTS], WARMUP_REQUESTS)
            before = process_cpu.snapshot()
            sat = await _engine_load(engine, saturation, args.concurrency)
            cpu = per_token_ms(process_cpu.cpu_by_role(before, process_cpu.snapshot()), sat)
            return sat, await _engine_load(engine, single, 1), cpu

        sat, one, cpu = asyncio.run(measure())
    finally:
        engine.shutdown()
    return SystemResult(OFFLINE, sat, one, cpu)


def per_token_ms(cpu_s_by_role: dict[str, float], report: LoadReport) -> dict[str, float]:
    tokens = max(1, round(report.output_token_throughput * report.duration_s))
    return {role: used / tokens * 1000 for role, used in cpu_s_by_role.items()}


# ---- served -------------------------------------------------------------------------------
def app_args(args: argparse.Namespace, model: str, batcher: bool) -> dict:
    """The default config, but for the model, the replica's CPUs and `--app-arg`s."""
    extra = dict(item.split("=", 1) for item in args.app_arg)
    return {
        "model": model,
        "engine": engine_settings(args),
        "replica.num_cpus": args.replica_cpus,
        "batcher.enabled": batcher,
        "auth": {"api_keys_env": None},
        **extra,
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
        if args.direct_ingress:
            port = direct_ingress_port(port)
        client = load_client(port, model, WARMUP_REQUESTS)

        async def measure() -> tuple[LoadReport, LoadReport, dict[str, float]]:
            await run_load(client, saturation[:WARMUP_REQUESTS])
            client.concurrency = args.concurrency
            before = process_cpu.snapshot()
            records, duration = await run_load(client, saturation)
            cpu_s = process_cpu.cpu_by_role(before, process_cpu.snapshot())
            sat = build_report(records, duration)
            client.concurrency = 1
            records, duration = await run_load(client, single)
            return sat, build_report(records, duration), per_token_ms(cpu_s, sat)

        sat, one, cpu = asyncio.run(measure())
    finally:
        serve.delete(APP_NAME)
    for report in (sat, one):
        if report.errors:
            print(f"# errors: {dict(report.errors)}", flush=True)
    return SystemResult(GRAPH_BATCHER if batcher else GRAPH_DIRECT, sat, one, cpu)


DIRECT_INGRESS_PORTS = 16  # the range Serve may give the ingress replica, from a free port


def direct_ingress_env(first_port: int) -> list[str]:
    """Serve's direct ingress with its HTTP ports in [first_port, + DIRECT_INGRESS_PORTS)."""
    last = first_port + DIRECT_INGRESS_PORTS - 1
    return [
        "RAY_SERVE_ENABLE_DIRECT_INGRESS=1",
        f"RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT={first_port}",
        f"RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT={last}",
        f"RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT={last + 1}",
        f"RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT={last + DIRECT_INGRESS_PORTS}",
    ]


def direct_ingress_port(first_port: int) -> int:
    """The port the ingress replica serves HTTP on: the one in its range that answers."""
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for port in range(first_port, first_port + DIRECT_INGRESS_PORTS):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    return port
            except httpx.HTTPError:
                continue
        time.sleep(0.5)
    raise RuntimeError(f"no direct-ingress HTTP port answered from {first_port}")


def start_serve(serve_env: list[str], direct_ingress: bool = False, haproxy: bool = False) -> int:
    """A local Ray + Serve on a free loopback port (with direct ingress: the first of the
    ingress replica's port range; with HAProxy: HAProxy's port, the replicas behind it);
    `serve_env` reaches every Ray process."""
    if haproxy:
        serve_env = [*serve_env, "RAY_SERVE_ENABLE_HA_PROXY=1"]
    if direct_ingress or haproxy:
        with socket.socket() as sock:  # a random range start in 30000-49999
            sock.bind(("127.0.0.1", 0))
            first_port = sock.getsockname()[1] % 20000 + 30000
        serve_env = [*serve_env, *direct_ingress_env(first_port)]
    os.environ.update(dict(item.split("=", 1) for item in serve_env))
    import ray
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",  # loopback only
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=256 << 20,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return first_port if direct_ingress and not haproxy else port


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
    port = start_serve(args.serve_env, args.direct_ingress, args.haproxy)
    summaries: list[dict] = []
    try:
        for model in args.models:
            saturation, single = workloads(args)
            served = []
            for batcher in (True, False):
                print(f"# {model}: batcher={batcher} ... load average {os.getloadavg()}")
                served.append(run_served(args, model, port, batcher, saturation, single))
            print(f"\n## {model}  (load average at the end {os.getloadavg()})\n")
            print(format_comparison(model, offline[model], served[0], served[1]), flush=True)
            summaries.append(summary(model, offline[model], served[0], served[1]))
            if args.json:
                Path(args.json).write_text(json.dumps(summaries, indent=1))
    finally:
        stop_serve()
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
