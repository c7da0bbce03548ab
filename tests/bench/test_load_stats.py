"""bench/load_stats.py: percentiles and TTFT/TPOT/ITL/E2E from synthetic timestamps."""

from __future__ import annotations

import math

import pytest

from bench.load_stats import RequestRecord, build_report, format_table, percentile, summarize


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 90) == pytest.approx(4.6)  # rank 3.6: 4 + 0.6 * (5 - 4)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="q must be in"):
        percentile(values, 101)


def test_summary_of_1_to_100() -> None:
    summary = summarize([float(v) for v in range(1, 101)])
    assert (summary.count, summary.mean) == (100, 50.5)
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p90 == pytest.approx(90.1)
    assert summary.p99 == pytest.approx(99.01)


def make_record(sent: float, chunks: list[float], finished: float, tokens: int | None = None):
    return RequestRecord(
        sent_s=sent,
        prompt_len=8,
        max_tokens=len(chunks),
        chunk_times_s=chunks,
        finished_s=finished,
        output_tokens=tokens,
    )


def test_per_request_latencies() -> None:
    # sent at 10.0, first token after 0.2 s, then 4 more tokens every 50 ms, done 10 ms later
    record = make_record(10.0, [10.2, 10.25, 10.3, 10.35, 10.4], 10.41)
    assert record.ok
    assert record.ttft_s == pytest.approx(0.2)
    assert record.itl_s == pytest.approx([0.05] * 4)
    assert record.e2e_s == pytest.approx(0.41)
    assert record.tpot_s == pytest.approx((0.41 - 0.2) / 4)
    # the server's usage wins over the chunk count (a chunk may carry several tokens)
    merged = make_record(0.0, [0.1, 0.3], 0.3, tokens=5)
    assert merged.num_output_tokens == 5
    assert merged.tpot_s == pytest.approx(0.2 / 4)
    assert make_record(0.0, [0.1], 0.1).tpot_s is None


def test_report_aggregates_ok_requests_and_counts_errors() -> None:
    records = [
        make_record(0.0, [0.1, 0.2, 0.3], 0.3),  # ttft 0.1, itl 0.1 0.1, tpot 0.1
        make_record(1.0, [1.3, 1.5], 1.5, tokens=2),  # ttft 0.3, itl 0.2, tpot 0.2
        RequestRecord(sent_s=2.0, prompt_len=8, max_tokens=3, error="HTTP 503: draining"),
        RequestRecord(sent_s=2.5, prompt_len=8, max_tokens=3, error="HTTP 503: draining"),
        RequestRecord(sent_s=3.0, prompt_len=8, max_tokens=3, finished_s=3.1),  # no output
    ]
    report = build_report(records, duration_s=4.0)
    assert (report.num_requests, report.num_ok, report.num_errors) == (5, 2, 3)
    assert report.errors == {"HTTP 503: draining": 2, "stream ended without output": 1}
    assert report.ttft.mean == pytest.approx(0.2)
    assert (report.ttft.p50, report.ttft.count) == (pytest.approx(0.2), 2)
    assert report.itl.mean == pytest.approx(0.4 / 3)
    assert report.tpot.mean == pytest.approx(0.15)
    assert report.e2e.p99 == pytest.approx(0.3 + 0.99 * 0.2)
    assert report.request_throughput == pytest.approx(0.5)
    assert report.output_token_throughput == pytest.approx(5 / 4.0)

    table = format_table(report)
    ttft_row = table.splitlines()[1].split()
    assert ttft_row == ["TTFT", "(ms)", "200.0", "200.0", "280.0", "298.0", "2"]
    assert "2 ok, 3 failed, of 5" in table
    assert "error x2: HTTP 503: draining" in table
    with pytest.raises(ValueError, match="duration_s"):
        build_report(records, duration_s=0.0)
