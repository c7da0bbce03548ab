"""The side-by-side table and the two issue-6 target checks of bench/serve_compare.py.

Pure functions over LoadReports (bench/load_stats.py): no I/O, no timing. A `SystemResult`
is one system's two runs: closed-loop saturation (throughput) and one request at a time
(TTFT, TPOT). Targets: the full graph keeps >= 90% of the offline engine's saturation
throughput; the batcher adds <= 5 ms to the median c=1 TTFT versus the graph without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.load_stats import LoadReport

THROUGHPUT_TARGET = 0.90  # the full graph's share of offline saturation throughput, at least
TTFT_OVERHEAD_TARGET_S = 0.005  # the batcher's added median c=1 TTFT, at most

OFFLINE = "offline (engine in-process)"
GRAPH_BATCHER = "graph + batcher"
GRAPH_DIRECT = "graph, batcher off"


@dataclass(frozen=True, slots=True)
class SystemResult:
    name: str
    saturation: LoadReport
    single: LoadReport  # concurrency 1


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    passed: bool
    detail: str


def throughput_share(system: SystemResult, offline: SystemResult) -> float:
    """The system's saturation output tok/s as a fraction of the offline engine's."""
    base = offline.saturation.output_token_throughput
    return system.saturation.output_token_throughput / base if base > 0 else math.nan


def target_checks(
    offline: SystemResult, batcher: SystemResult, direct: SystemResult
) -> list[TargetCheck]:
    """The two targets, PASS only when measured and met (a NaN or a failed request fails)."""
    share = throughput_share(batcher, offline)
    all_ok = all(
        report.num_errors == 0
        for system in (offline, batcher, direct)
        for report in (system.saturation, system.single)
    )
    overhead_s = batcher.single.ttft.p50 - direct.single.ttft.p50
    return [
        TargetCheck(
            f"saturation throughput, graph + batcher >= {THROUGHPUT_TARGET:.0%} of offline",
            share >= THROUGHPUT_TARGET and all_ok,
            f"{share:.1%}",
        ),
        TargetCheck(
            f"c=1 median TTFT, batcher adds <= {TTFT_OVERHEAD_TARGET_S * 1000:.0f} ms",
            overhead_s <= TTFT_OVERHEAD_TARGET_S and all_ok,
            f"{overhead_s * 1000:+.1f} ms",
        ),
    ]


def format_comparison(offline: SystemResult, batcher: SystemResult, direct: SystemResult) -> str:
    """A Markdown table, one row per system, then the target checks."""
    lines = [
        "| system | saturation tok/s | % of offline | c=1 TTFT p50 (ms) | c=1 TTFT p90 (ms) "
        "| c=1 TPOT p50 (ms) | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for system in (offline, batcher, direct):
        failed = system.saturation.num_errors + system.single.num_errors
        lines.append(
            f"| {system.name} | {system.saturation.output_token_throughput:.1f} "
            f"| {throughput_share(system, offline):.1%} "
            f"| {system.single.ttft.p50 * 1000:.1f} | {system.single.ttft.p90 * 1000:.1f} "
            f"| {system.single.tpot.p50 * 1000:.1f} | {failed} |"
        )
    lines.append("")
    for check in target_checks(offline, batcher, direct):
        lines.append(f"- {'PASS' if check.passed else 'FAIL'}: {check.name}: {check.detail}")
    return "\n".join(lines)
