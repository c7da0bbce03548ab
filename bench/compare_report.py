"""The side-by-side table and the target checks of bench/serve_compare.py.

Pure functions over LoadReports (bench/load_stats.py) and CPU figures: no I/O, no timing.
A `SystemResult` is one system's two runs: workload W at saturation (many concurrent
streams) and one request at a time, plus the CPU milliseconds per output token that each
process role spent during the saturation run (bench/process_cpu.py). Targets (issue 12):
through the default config the full graph serves W with 0 errors at >= 85% of the
in-process engine's throughput (>= 50% for `tiny`) with a TTFT p50 <= 1.5x in-process;
everything but the engine's own compute costs <= 0.3 ms of CPU per output token; one
request at a time adds <= 10 ms of TTFT and <= 2 ms of inter-token latency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.load_stats import LoadReport

THROUGHPUT_TARGET = {"tiny": 0.50}  # per model; others: DEFAULT_THROUGHPUT_TARGET
DEFAULT_THROUGHPUT_TARGET = 0.85
SATURATION_TTFT_RATIO = 1.5
SERVING_CPU_MS_TARGET = 0.3
SINGLE_TTFT_OVERHEAD_S = 0.010
SINGLE_ITL_OVERHEAD_S = 0.002

OFFLINE = "in-process engine"
GRAPH_BATCHER = "graph + batcher"
GRAPH_DIRECT = "graph, batcher off"
SERVING_ROLES = ("ingress", "batcher", "proxy")  # CPU that is all serving work
CPU_COLUMNS = ("replica", "batcher", "ingress", "proxy", "this process", "ray daemons")


@dataclass(frozen=True, slots=True)
class SystemResult:
    name: str
    saturation: LoadReport
    single: LoadReport  # concurrency 1
    cpu_ms_per_token: dict[str, float] = field(default_factory=dict)  # role -> ms, saturation


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    passed: bool
    detail: str


def throughput_share(system: SystemResult, offline: SystemResult) -> float:
    """The system's saturation output tok/s as a fraction of the in-process engine's."""
    base = offline.saturation.output_token_throughput
    return system.saturation.output_token_throughput / base if base > 0 else math.nan


def serving_cpu_ms(system: SystemResult, offline: SystemResult) -> float:
    """CPU ms per output token of everything but the engine's own compute: ingress, batcher,
    proxy, and the replica's CPU beyond the in-process engine process's."""
    cpu = system.cpu_ms_per_token
    return sum(cpu.get(role, 0.0) for role in SERVING_ROLES) + replica_beyond_engine_ms(
        system, offline
    )


def replica_beyond_engine_ms(system: SystemResult, offline: SystemResult) -> float:
    """The replica's CPU ms per output token beyond the in-process engine process's."""
    engine_ms = offline.cpu_ms_per_token.get("this process", math.nan)
    return max(0.0, system.cpu_ms_per_token.get("replica", math.nan) - engine_ms)


def target_checks(
    model: str, offline: SystemResult, batcher: SystemResult, direct: SystemResult
) -> list[TargetCheck]:
    """The targets for the full graph, PASS only when measured and met."""
    failed = sum(
        report.num_errors
        for system in (offline, batcher, direct)
        for report in (system.saturation, system.single)
    )
    share = throughput_share(batcher, offline)
    share_target = THROUGHPUT_TARGET.get(model, DEFAULT_THROUGHPUT_TARGET)
    ttft_ratio = batcher.saturation.ttft.p50 / offline.saturation.ttft.p50
    serving_ms = serving_cpu_ms(batcher, offline)
    ttft_extra_s = batcher.single.ttft.p50 - offline.single.ttft.p50
    itl_extra_s = batcher.single.itl.p50 - offline.single.itl.p50
    return [
        TargetCheck("every request of every system succeeded", failed == 0, f"{failed} failed"),
        TargetCheck(
            f"saturation throughput >= {share_target:.0%} of in-process",
            share >= share_target,
            f"{share:.1%}",
        ),
        TargetCheck(
            f"saturation TTFT p50 <= {SATURATION_TTFT_RATIO}x in-process",
            ttft_ratio <= SATURATION_TTFT_RATIO,
            f"{ttft_ratio:.2f}x",
        ),
        TargetCheck(
            f"serving CPU per output token <= {SERVING_CPU_MS_TARGET} ms",
            serving_ms <= SERVING_CPU_MS_TARGET,
            f"{serving_ms:.3f} ms",
        ),
        TargetCheck(
            f"c=1 TTFT p50 <= in-process + {SINGLE_TTFT_OVERHEAD_S * 1000:.0f} ms",
            ttft_extra_s <= SINGLE_TTFT_OVERHEAD_S,
            f"{ttft_extra_s * 1000:+.1f} ms",
        ),
        TargetCheck(
            f"c=1 ITL p50 <= in-process + {SINGLE_ITL_OVERHEAD_S * 1000:.0f} ms",
            itl_extra_s <= SINGLE_ITL_OVERHEAD_S,
            f"{itl_extra_s * 1000:+.2f} ms",
        ),
    ]


def format_comparison(
    model: str, offline: SystemResult, batcher: SystemResult, direct: SystemResult
) -> str:
    """Two Markdown tables (latency and throughput; CPU per token per process), then the
    target checks for the full graph."""
    lines = [
        "| system | W tok/s | % of in-process | W TTFT p50 (ms) | c=1 TTFT p50 (ms) "
        "| c=1 ITL p50 (ms) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    systems = (offline, batcher, direct)
    for system in systems:
        failed = system.saturation.num_errors + system.single.num_errors
        lines.append(
            f"| {system.name} | {system.saturation.output_token_throughput:.1f} "
            f"| {throughput_share(system, offline):.1%} "
            f"| {system.saturation.ttft.p50 * 1000:.0f} | {system.single.ttft.p50 * 1000:.1f} "
            f"| {system.single.itl.p50 * 1000:.2f} | {failed} |"
        )
    lines += [
        "",
        "CPU ms per output token during W, per process role (serving = ingress + batcher + "
        "proxy + the replica's CPU beyond the in-process engine process's):",
        "",
        "| system | " + " | ".join(CPU_COLUMNS) + " | serving |",
        "|---|" + "---|" * (len(CPU_COLUMNS) + 1),
    ]
    for system in systems:
        cells = [f"{system.cpu_ms_per_token.get(role, 0.0):.3f}" for role in CPU_COLUMNS]
        serving = "" if system is offline else f"{serving_cpu_ms(system, offline):.3f}"
        lines.append(f"| {system.name} | " + " | ".join(cells) + f" | {serving} |")
    lines.append("")
    for check in target_checks(model, offline, batcher, direct):
        lines.append(f"- {'PASS' if check.passed else 'FAIL'}: {check.name}: {check.detail}")
    return "\n".join(lines)


def summary(model: str, offline: SystemResult, batcher: SystemResult, direct: SystemResult) -> dict:
    """The figures of one model's comparison as plain data (serve_compare --json)."""

    def figures(system: SystemResult) -> dict:
        return {
            "tok_s": system.saturation.output_token_throughput,
            "share": throughput_share(system, offline),
            "w_ttft_p50_ms": system.saturation.ttft.p50 * 1000,
            "c1_ttft_p50_ms": system.single.ttft.p50 * 1000,
            "c1_itl_p50_ms": system.single.itl.p50 * 1000,
            "failed": system.saturation.num_errors + system.single.num_errors,
            "cpu_ms_per_token": dict(system.cpu_ms_per_token),
            "serving_cpu_ms": None if system is offline else serving_cpu_ms(system, offline),
            "replica_beyond_engine_ms": (
                None if system is offline else replica_beyond_engine_ms(system, offline)
            ),
        }

    return {
        "model": model,
        "systems": {system.name: figures(system) for system in (offline, batcher, direct)},
        "checks": [
            {"name": check.name, "passed": check.passed, "detail": check.detail}
            for check in target_checks(model, offline, batcher, direct)
        ],
    }
