"""bench/compare_report.py on made-up runs, and serve_compare's app config vs its engine."""

from __future__ import annotations

import json

import pytest

from bench.compare_report import (
    GRAPH_BATCHER,
    GRAPH_DIRECT,
    OFFLINE,
    SystemResult,
    format_comparison,
    serving_cpu_ms,
    target_checks,
    throughput_share,
)
from bench.load_stats import LoadReport, RequestRecord, build_report

ENGINE_CPU = {"this process": 1.0}  # ms per token of the in-process engine process


def report(tokens: int, duration_s: float, ttft_s: float, failed: int = 0) -> LoadReport:
    """One request of `tokens` tokens, 1 ms apart after a TTFT of ttft_s, plus failures."""
    chunks = [ttft_s + 0.001 * i for i in range(tokens)]
    ok = RequestRecord(0.0, 8, tokens, chunks, chunks[-1], tokens)
    bad = [RequestRecord(0.0, 8, tokens, error="HTTP 503: busy") for _ in range(failed)]
    return build_report([ok, *bad], duration_s)


def system(
    name: str,
    tok_per_s: float,
    ttft_s: float,
    failed: int = 0,
    cpu: dict[str, float] | None = None,
    saturation_ttft_s: float = 0.0,
) -> SystemResult:
    saturation = report(100, 100 / tok_per_s, saturation_ttft_s)
    return SystemResult(name, saturation, report(5, 1.0, ttft_s, failed), cpu or {})


def offline() -> SystemResult:
    return system(OFFLINE, 400.0, 0.003, cpu=ENGINE_CPU, saturation_ttft_s=1.0)


GOOD_CPU = {"replica": 1.1, "batcher": 0.05, "ingress": 0.1, "proxy": 0.02}  # 0.27 ms


def test_share_is_saturation_throughput_over_offline() -> None:
    offline = system(OFFLINE, 400.0, 0.003)
    assert throughput_share(system(GRAPH_BATCHER, 300.0, 0.03), offline) == pytest.approx(0.75)
    assert throughput_share(offline, offline) == pytest.approx(1.0)


def test_serving_cpu_is_the_hops_plus_the_replica_beyond_the_engine() -> None:
    graph = system(GRAPH_BATCHER, 380.0, 0.01, cpu=GOOD_CPU)
    assert serving_cpu_ms(graph, offline()) == pytest.approx(0.05 + 0.1 + 0.02 + 0.1)
    cheap_replica = system(GRAPH_BATCHER, 380.0, 0.01, cpu={**GOOD_CPU, "replica": 0.5})
    assert serving_cpu_ms(cheap_replica, offline()) == pytest.approx(0.17)  # never below 0


@pytest.mark.parametrize(
    ("model", "tok_s", "saturation_ttft_s", "single_ttft_s", "cpu", "expected"),
    [
        ("bench", 380.0, 1.4, 0.012, GOOD_CPU, [True] * 6),
        ("bench", 330.0, 1.4, 0.012, GOOD_CPU, [True, False, True, True, True, True]),
        ("tiny", 330.0, 1.4, 0.012, GOOD_CPU, [True] * 6),  # 82.5% >= tiny's 50%
        ("bench", 380.0, 1.6, 0.012, GOOD_CPU, [True, True, False, True, True, True]),
        ("bench", 380.0, 1.4, 0.014, GOOD_CPU, [True, True, True, True, False, True]),
        (
            "bench",
            380.0,
            1.4,
            0.012,
            {**GOOD_CPU, "ingress": 0.2},
            [True, True, True, False, True, True],
        ),
    ],
)
def test_target_checks(model, tok_s, saturation_ttft_s, single_ttft_s, cpu, expected) -> None:
    graph = system(
        GRAPH_BATCHER, tok_s, single_ttft_s, cpu=cpu, saturation_ttft_s=saturation_ttft_s
    )
    checks = target_checks(model, offline(), graph, system(GRAPH_DIRECT, 390.0, 0.010))
    assert [check.passed for check in checks] == expected


def test_a_failed_request_fails_the_first_check() -> None:
    graph = system(GRAPH_BATCHER, 400.0, 0.004, failed=1, cpu=GOOD_CPU, saturation_ttft_s=1.0)
    checks = target_checks("bench", offline(), graph, system(GRAPH_DIRECT, 400.0, 0.004))
    assert not checks[0].passed and checks[0].detail == "1 failed"


def test_tables_have_one_row_per_system_and_the_checks() -> None:
    graph = system(GRAPH_BATCHER, 380.0, 0.0105, cpu=GOOD_CPU, saturation_ttft_s=1.2)
    text = format_comparison("bench", offline(), graph, system(GRAPH_DIRECT, 390.0, 0.010))
    lines = text.splitlines()
    assert lines[2].startswith(f"| {OFFLINE} | 400.0 | 100.0% | 1000 | 3.0 | 1.00 | 0 |")
    assert lines[3].startswith(f"| {GRAPH_BATCHER} | 380.0 | 95.0% | 1200 | 10.5 |")
    assert f"| {GRAPH_BATCHER} | 1.100 | 0.050 | 0.100 | 0.020 | 0.000 | 0.000 | 0.270 |" in text
    assert "- PASS: saturation throughput >= 85% of in-process: 95.0%" in text
    assert "- PASS: c=1 TTFT p50 <= in-process + 10 ms: +7.5 ms" in text


@pytest.mark.parametrize("batcher", [True, False])
def test_serve_compare_app_config_matches_the_offline_engine(batcher: bool) -> None:
    from bench.serve_compare import app_args, engine_settings, parse_args
    from serve_app.config import load_app_config
    from serve_app.engine.config import EngineConfig

    args = parse_args(["--models", "bench", "--app-arg", "replica.stream_interval_tokens=3"])
    config = load_app_config(app_args(args, "bench", batcher))
    assert config.batcher.enabled is batcher
    assert config.engine == EngineConfig(model="bench", **engine_settings(args))
    assert config.replica.stream_interval_tokens == 3
    defaults = load_app_config({"model": "bench"})
    assert (config.admission, config.ingress) == (defaults.admission, defaults.ingress)
    assert config.admission_bound >= args.concurrency  # W fits the default config


def test_a_lever_row_reads_the_summary_serve_compare_writes() -> None:
    from bench.compare_report import summary
    from bench.serve_levers import row

    graph = system(GRAPH_BATCHER, 380.0, 0.01, cpu=GOOD_CPU)
    direct = system(GRAPH_DIRECT, 390.0, 0.01, cpu=GOOD_CPU)
    result = json.loads(json.dumps(summary("tiny", offline(), graph, direct)))  # as on disk
    cells = [cell.strip() for cell in row("grpc", result).strip("|").split("|")]
    assert cells[:4] == ["grpc", "tiny", "380", "95.0%"]
    assert cells[5:7] == ["0.27", "0.10"]  # serving CPU, the replica beyond the engine
