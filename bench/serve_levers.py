"""The serving path's levers side by side: `bench/serve_compare.py` once per lever, in one
sitting, and one table of the full graph's figures against the in-process engine of the
same run.

    .venv/bin/python -m bench.serve_levers --models tiny [--levers baseline grpc ...]

Each lever is an existing feature, of Serve or of this app, turned on alone over the
default config with Serve's own defaults (`serve_preset=default`; serve_compare runs W
through the default config, in-process vs graph):

- baseline: the default config with Serve's defaults;
- stream_interval_50ms: `replica.stream_interval_ms=50`, time-sliced replica messages;
- grpc_transport: Serve's gRPC transport between deployments instead of Ray actor calls
  (`RAY_SERVE_USE_GRPC_BY_DEFAULT=1`: every handle's `_by_reference=False`);
- direct_ingress: the ingress replica serves HTTP itself, no proxy hop;
- throughput_optimized: Serve's throughput preset (`RAY_SERVE_THROUGHPUT_OPTIMIZED=1`: user
  code and router on the replica's own loop, gRPC transport, direct ingress, GC frozen
  after start-up, buffered request logs);
- omp_passive: the replica's OpenMP threads sleep when idle (`OMP_WAIT_POLICY=PASSIVE`)
  instead of spinning on cores the serving processes need;
- haproxy: Serve's HAProxy mode (`RAY_SERVE_ENABLE_HA_PROXY=1`) in place of its Python
  proxy, in front of direct-ingress ingress replicas (needs the `haproxy` binary);
- app_default: the app as it ships (`serve_preset=throughput`, serve_app/app.py): Serve's
  throughput preset without its direct ingress in every replica, OpenMP passive in the
  model replica.

Each runs in its own process (Serve reads its flags at import). The box drifts 10-20%
between minutes: compare a lever with the baseline through the ratios, not the tok/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.compare_report import GRAPH_BATCHER, OFFLINE

SERVE_DEFAULTS = ["--app-arg", "serve_preset=default"]  # the app without its Serve preset
LEVERS: dict[str, list[str]] = {
    "baseline": [],
    "stream_interval_50ms": ["--app-arg", "replica.stream_interval_ms=50"],
    "grpc_transport": ["--serve-env", "RAY_SERVE_USE_GRPC_BY_DEFAULT=1"],
    "direct_ingress": ["--direct-ingress"],
    "throughput_optimized": ["--serve-env", "RAY_SERVE_THROUGHPUT_OPTIMIZED=1", "--direct-ingress"],
    "omp_passive": ["--serve-env", "OMP_WAIT_POLICY=PASSIVE"],
    "haproxy": ["--haproxy"],
}
# Each lever alone over Serve's defaults; `app_default` is the app as it ships: Serve's
# throughput preset without direct ingress, and the replica's OpenMP threads passive.
LEVERS = {name: SERVE_DEFAULTS + args for name, args in LEVERS.items()}
LEVERS["app_default"] = []
COLUMNS = (
    "| lever | model | graph tok/s | % of in-process | W TTFT p50 vs in-process "
    "| serving CPU ms/token | replica beyond engine | ingress | batcher | proxy "
    "| c=1 TTFT +ms | c=1 ITL +ms | failed |"
)


def run_lever(name: str, models: list[str], extra: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        command = [sys.executable, "-m", "bench.serve_compare", "--models", *models]
        command += [*LEVERS[name], *extra, "--json", str(out)]
        print(f"# {name}: {' '.join(command[2:])}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", file=sys.stderr)
            raise RuntimeError(f"lever {name}: serve_compare failed ({done.returncode})")
        return json.loads(out.read_text())


def row(name: str, result: dict) -> str:
    offline = result["systems"][OFFLINE]
    graph = result["systems"][GRAPH_BATCHER]
    cpu = graph["cpu_ms_per_token"]
    cells = [
        name,
        result["model"],
        f"{graph['tok_s']:.0f}",
        f"{graph['share']:.1%}",
        f"{graph['w_ttft_p50_ms'] / offline['w_ttft_p50_ms']:.2f}x",
        f"{graph['serving_cpu_ms']:.2f}",
        f"{graph['replica_beyond_engine_ms']:.2f}",
        f"{cpu.get('ingress', 0.0):.2f}",
        f"{cpu.get('batcher', 0.0):.2f}",
        f"{cpu.get('proxy', 0.0):.2f}",
        f"{graph['c1_ttft_p50_ms'] - offline['c1_ttft_p50_ms']:+.0f}",
        f"{graph['c1_itl_p50_ms'] - offline['c1_itl_p50_ms']:+.1f}",
        str(graph["failed"]),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny"])
    parser.add_argument("--levers", nargs="+", choices=list(LEVERS), default=list(LEVERS))
    parser.add_argument(
        "--compare-arg",
        action="append",
        default=[],
        help="passed on to serve_compare (e.g. --compare-arg=--single-requests=10)",
    )
    args = parser.parse_args()
    started = time.monotonic()
    rows = []
    for name in args.levers:
        try:
            results = run_lever(name, args.models, args.compare_arg)
        except RuntimeError as error:  # one lever that cannot run here does not stop the rest
            print(f"# {error}", flush=True)
            continue
        for result in results:
            rows.append(row(name, result))
            print(rows[-1], flush=True)
    print(f"\n# {time.monotonic() - started:.0f} s in all; full graph (ingress -> batcher -> ")
    print("# replica) vs the in-process engine of the same serve_compare run\n")
    print(COLUMNS)
    print("|" + "---|" * COLUMNS.count(" | ") + "---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
