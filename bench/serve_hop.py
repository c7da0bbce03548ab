"""The bare cost of one more Serve deployment in a streaming call path, on this machine.

The micro-batcher is one more deployment between the ingress and the model replicas, so at
one request at a time it adds at least what Serve itself charges for a deployment-to-
deployment streaming hop. This measures that floor with trivial deployments (no model, no
payload): a driver calls `Leaf` directly, then through `Middle -> Leaf`, alternating, and
prints the median time until the leaf runs and until its one item is back.

    .venv/bin/python -m bench.serve_hop --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import ray
from ray import serve


@serve.deployment
class Leaf:
    async def stream(self, sent_s: float):
        yield time.time() - sent_s  # seconds from the driver's call to the leaf running


@serve.deployment
class Middle:
    def __init__(self, leaf) -> None:
        self._leaf = leaf.options(stream=True, method_name="stream")

    async def stream(self, sent_s: float):
        async for entered_s in self._leaf.remote(sent_s):
            yield entered_s


async def measure(handle, calls: int) -> tuple[list[float], list[float]]:
    """Per call: (driver -> leaf running, driver -> leaf's item back), in ms."""
    entered, round_trip = [], []
    for _ in range(calls):
        sent_s = time.time()
        async for entered_s in handle.remote(sent_s):
            round_trip.append((time.time() - sent_s) * 1000)
            entered.append(entered_s * 1000)
    return entered, round_trip


async def run(calls: int, warmup: int) -> list[tuple[str, float, float]]:
    direct = serve.get_deployment_handle("Leaf", "serve_hop")
    through = serve.get_deployment_handle("Middle", "serve_hop")
    paths = {
        "driver -> Leaf": direct.options(stream=True, method_name="stream"),
        "driver -> Middle -> Leaf": through.options(stream=True, method_name="stream"),
    }
    samples = {name: ([], []) for name in paths}
    for _ in range(warmup):
        for handle in paths.values():
            await measure(handle, 1)
    for _ in range(calls):  # alternate, so drift hits both paths alike
        for name, handle in paths.items():
            entered, round_trip = await measure(handle, 1)
            samples[name][0].extend(entered)
            samples[name][1].extend(round_trip)
    return [
        (name, statistics.median(entered), statistics.median(round_trip))
        for name, (entered, round_trip) in samples.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="per path, after warm-up")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        serve.run(Middle.bind(Leaf.bind()), name="serve_hop", route_prefix=None)
        rows = asyncio.run(run(args.calls, args.warmup))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\n{args.calls} calls per path, medians (ms)")
    print("| path | leaf running | item back |")
    print("|---|---|---|")
    for name, entered, round_trip in rows:
        print(f"| {name} | {entered:.2f} | {round_trip:.2f} |")
    (_, direct_in, direct_back), (_, through_in, through_back) = rows
    print(
        f"| one more deployment adds | {through_in - direct_in:+.2f} "
        f"| {through_back - direct_back:+.2f} |"
    )


if __name__ == "__main__":
    main()
