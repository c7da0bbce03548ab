"""Latency statistics of a load test, from per-request timestamps (no I/O, no plotting).

Definitions (all times in seconds, from a monotonic clock):
- TTFT: first streamed chunk - request sent.
- E2E: stream finished - request sent.
- TPOT (time per output token, after the first): (E2E - TTFT) / (output_tokens - 1); only
  for requests with at least two output tokens.
- ITL (inter-token latency): the gaps between consecutive streamed chunks, every gap of
  every request pooled together.
Throughput divides what completed successfully by the wall time of the whole run.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    """What one request did on the wire."""

    sent_s: float
    prompt_len: int  # what the load generator asked for
    max_tokens: int
    chunk_times_s: list[float] = field(default_factory=list)  # arrival of each content chunk
    finished_s: float | None = None
    output_tokens: int | None = None  # the server's usage.completion_tokens, when reported
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.finished_s is not None and bool(self.chunk_times_s)

    @property
    def num_output_tokens(self) -> int:
        """The server's count when it sent usage, else one token per chunk."""
        return self.output_tokens if self.output_tokens is not None else len(self.chunk_times_s)

    @property
    def ttft_s(self) -> float:
        return self.chunk_times_s[0] - self.sent_s

    @property
    def e2e_s(self) -> float:
        assert self.finished_s is not None
        return self.finished_s - self.sent_s

    @property
    def tpot_s(self) -> float | None:
        if self.num_output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.num_output_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        times = self.chunk_times_s
        return [later - earlier for earlier, later in itertools.pairwise(times)]


@dataclass(frozen=True, slots=True)
class Summary:
    """Mean and percentiles of one latency, in seconds; NaN when there were no samples."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float


@dataclass(frozen=True, slots=True)
class LoadReport:
    num_requests: int
    num_ok: int
    duration_s: float
    ttft: Summary
    tpot: Summary
    itl: Summary
    e2e: Summary
    request_throughput: float  # successful requests per second
    output_token_throughput: float  # output tokens of successful requests per second
    errors: dict[str, int]  # error message -> count

    @property
    def num_errors(self) -> int:
        return self.num_requests - self.num_ok


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolating linearly between the closest ranks."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: list[float]) -> Summary:
    if not values:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        count=len(values),
        mean=sum(values) / len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
    )


def build_report(records: list[RequestRecord], duration_s: float) -> LoadReport:
    """Aggregate the records of one run that took duration_s of wall time."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    ok = [record for record in records if record.ok]
    tpots = [record.tpot_s for record in ok if record.tpot_s is not None]
    errors = Counter(
        record.error or "stream ended without output" for record in records if not record.ok
    )
    return LoadReport(
        num_requests=len(records),
        num_ok=len(ok),
        duration_s=duration_s,
        ttft=summarize([record.ttft_s for record in ok]),
        tpot=summarize(tpots),
        itl=summarize([gap for record in ok for gap in record.itl_s]),
        e2e=summarize([record.e2e_s for record in ok]),
        request_throughput=len(ok) / duration_s,
        output_token_throughput=sum(record.num_output_tokens for record in ok) / duration_s,
        errors=dict(errors.most_common()),
    )


def format_table(report: LoadReport) -> str:
    """The report as a plain-text table (latencies in milliseconds)."""
    lines = [f"{'metric':<10}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'samples':>9}"]
    for name, summary in (
        ("TTFT", report.ttft),
        ("TPOT", report.tpot),
        ("ITL", report.itl),
        ("E2E", report.e2e),
    ):
        cells = "".join(
            f"{value * 1000:>10.1f}"
            for value in (summary.mean, summary.p50, summary.p90, summary.p99)
        )
        lines.append(f"{name + ' (ms)':<10}{cells}{summary.count:>9}")
    lines += [
        "",
        f"requests: {report.num_ok} ok, {report.num_errors} failed, "
        f"of {report.num_requests} in {report.duration_s:.2f} s",
        f"request throughput: {report.request_throughput:.2f} req/s",
        f"output token throughput: {report.output_token_throughput:.1f} tok/s",
    ]
    lines += [f"error x{count}: {message}" for message, count in report.errors.items()]
    return "\n".join(lines)
