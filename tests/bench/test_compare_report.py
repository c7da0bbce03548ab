"""bench/compare_report.py on made-up runs, and serve_compare's app config vs its offline engine."""

from __future__ import annotations

import pytest

from bench.compare_report import (
    GRAPH_BATCHER,
    GRAPH_DIRECT,
    OFFLINE,
    SystemResult,
    format_comparison,
    target_checks,
    throughput_share,
)
from bench.load_stats import LoadReport, RequestRecord, build_report


def report(tokens: int, duration_s: float, ttft_s: float, failed: int = 0) -> LoadReport:
    """One request of `tokens` tokens, 1 ms apart after a TTFT of ttft_s, plus failures."""
    chunks = [ttft_s + 0.001 * i for i in range(tokens)]
    ok = RequestRecord(0.0, 8, tokens, chunks, chunks[-1], tokens)
    bad = [RequestRecord(0.0, 8, tokens, error="HTTP 503: busy") for _ in range(failed)]
    return build_report([ok, *bad], duration_s)


def system(name: str, tok_per_s: float, ttft_s: float, failed: int = 0) -> SystemResult:
    return SystemResult(name, report(100, 100 / tok_per_s, 0.0), report(5, 1.0, ttft_s, failed))


def test_share_is_saturation_throughput_over_offline() -> None:
    offline = system(OFFLINE, 400.0, 0.003)
    assert throughput_share(system(GRAPH_BATCHER, 300.0, 0.03), offline) == pytest.approx(0.75)
    assert throughput_share(offline, offline) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("batcher_tok_s", "batcher_ttft_s", "expected"),
    [
        (380.0, 0.034, [True, True]),  # 95%, +4 ms
        (350.0, 0.034, [False, True]),  # 87.5%
        (380.0, 0.036, [True, False]),  # +6 ms
        (200.0, 0.050, [False, False]),
    ],
)
def test_target_checks(batcher_tok_s: float, batcher_ttft_s: float, expected: list) -> None:
    checks = target_checks(
        system(OFFLINE, 400.0, 0.003),
        system(GRAPH_BATCHER, batcher_tok_s, batcher_ttft_s),
        system(GRAPH_DIRECT, 390.0, 0.030),
    )
    assert [check.passed for check in checks] == expected


def test_a_failed_request_fails_both_targets() -> None:
    checks = target_checks(
        system(OFFLINE, 400.0, 0.003),
        system(GRAPH_BATCHER, 400.0, 0.030, failed=1),
        system(GRAPH_DIRECT, 400.0, 0.030),
    )
    assert [check.passed for check in checks] == [False, False]


def test_table_has_one_row_per_system_and_the_checks() -> None:
    text = format_comparison(
        system(OFFLINE, 400.0, 0.003),
        system(GRAPH_BATCHER, 380.0, 0.0345),
        system(GRAPH_DIRECT, 390.0, 0.030),
    )
    lines = text.splitlines()
    assert lines[2].startswith(f"| {OFFLINE} | 400.0 | 100.0% | 3.0 |")
    assert lines[3].startswith(f"| {GRAPH_BATCHER} | 380.0 | 95.0% | 34.5 |")
    assert lines[4].startswith(f"| {GRAPH_DIRECT} | 390.0 | 97.5% | 30.0 |")
    assert "- PASS: saturation throughput" in text and "95.0%" in text
    assert "- PASS: c=1 median TTFT" in text and "+4.5 ms" in text


@pytest.mark.parametrize("batcher", [True, False])
def test_serve_compare_app_config_matches_the_offline_engine(batcher: bool) -> None:
    from bench.serve_compare import app_args, engine_settings, parse_args
    from serve_app.config import load_app_config
    from serve_app.engine.config import EngineConfig

    args = parse_args(["--models", "bench", "--max-num-seqs", "16", "--kv-cache-mib", "64"])
    config = load_app_config(app_args(args, "bench", batcher))
    assert config.batcher.enabled is batcher
    assert config.engine == EngineConfig(model="bench", **engine_settings(args))
    assert (config.engine.max_num_seqs, config.engine.kv_cache_memory_bytes) == (16, 64 << 20)
    assert config.replica.max_ongoing_requests >= args.concurrency  # batcher off: 1 per request
