"""Where the CPU goes when the Serve graph is saturated: CPU seconds per process.

Starts a local Ray + Serve (as bench/serve_compare.py does), deploys the graph with the
batcher on and/or off, runs serve_compare's saturation workload through bench/serve_load.py's
client, and reads every process's CPU time from /proc before and after. Prints, per
process, its CPU seconds, its share of one core over the run, and its CPU milliseconds per
output token: what each hop (replica, batcher, ingress, Serve's proxy, the load client)
costs per token. Linux only (/proc).

    .venv/bin/python -m bench.serve_cpu --models bench --batcher on off --stream-interval 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_compare
from bench.serve_load import run_load

MIN_CPU_S = 0.2  # processes that used less are left out of the table


def process_cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every readable process: pid -> (command line, user + system CPU seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # the process ended
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        found[int(entry)] = (command.decode(errors="replace").strip()[:60], cpu_s)
    return found


def cpu_table(before: dict, after: dict, wall_s: float, tokens: int) -> list[str]:
    rows = []
    for pid, (command, cpu_s) in after.items():
        used = cpu_s - before.get(pid, (command, 0.0))[1]
        if used >= MIN_CPU_S:
            rows.append((used, pid, command))
    lines = ["| process | CPU s | % of a core | CPU ms per token |", "|---|---|---|---|"]
    for used, pid, command in sorted(rows, reverse=True):
        name = command or f"[pid {pid}: kernel thread]"
        per_token_ms = used / tokens * 1000
        lines.append(f"| {name} | {used:.2f} | {used / wall_s:.0%} | {per_token_ms:.3f} |")
    total = sum(used for used, _, _ in rows)
    lines.append(
        f"| all of the above | {total:.2f} | {total / wall_s:.0%} | {total / tokens * 1000:.3f} |"
    )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batcher", nargs="+", choices=["on", "off"], default=["on", "off"])
    known, rest = parser.parse_known_args(argv)
    args = serve_compare.parse_args(rest)  # the same workload and app knobs
    port = serve_compare.start_serve()
    from ray import serve

    from serve_app.app import build_app

    try:
        for model in args.models:
            saturation, _ = serve_compare.workloads(args)
            for mode in known.batcher:
                app = build_app(serve_compare.app_args(args, model, mode == "on"))
                serve.run(app, name=serve_compare.APP_NAME, route_prefix="/")
                client = serve_compare.load_client(port, model, serve_compare.WARMUP_REQUESTS)
                asyncio.run(run_load(client, saturation[: serve_compare.WARMUP_REQUESTS]))
                client.concurrency = args.concurrency
                before, started = process_cpu_seconds(), time.perf_counter()
                records, _ = asyncio.run(run_load(client, saturation))
                wall_s = time.perf_counter() - started
                after = process_cpu_seconds()
                serve.delete(serve_compare.APP_NAME)
                tokens = sum(record.num_output_tokens for record in records)
                failed = sum(record.error is not None for record in records)
                print(
                    f"\n## {model}, batcher {mode}, stream interval {args.stream_interval}: "
                    f"{tokens} tokens in {wall_s:.1f} s = {tokens / wall_s:.1f} tok/s, "
                    f"{failed} failed\n"
                )
                print("\n".join(cpu_table(before, after, wall_s, max(tokens, 1))), flush=True)
    finally:
        serve_compare.stop_serve()


if __name__ == "__main__":
    main()
