"""PromQL building blocks over serve_app/metrics.py's specs, shared by panels and alerts.

`window` is a range such as `5m`; panels pass Grafana's `$__rate_interval`, which Grafana
sizes from the scrape interval and the panel's resolution.
"""

from __future__ import annotations

from serve_app.metrics import MetricSpec

RATE_INTERVAL = "$__rate_interval"  # Grafana's own variable


def selector(spec: MetricSpec, matchers: str = "", suffix: str = "") -> str:
    return spec.series(suffix) + (f"{{{matchers}}}" if matchers else "")


def rate(spec: MetricSpec, window: str, by: str = "", matchers: str = "", suffix: str = "") -> str:
    """Per-second rate of a counter (or a histogram's `_count`/`_sum`), summed by `by`."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({selector(spec, matchers, suffix)}[{window}]))"


def rate_or_zero(spec: MetricSpec, window: str, matchers: str) -> str:
    """The summed rate of the series `matchers` pick, or 0 while none exists yet (no 5xx
    has ever happened, say): a ratio's numerator stays defined."""
    return f"({rate(spec, window, matchers=matchers)} or vector(0))"


def quantile(q: float, spec: MetricSpec, window: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    buckets = rate(spec, window, by=labels, suffix="_bucket")
    return f"histogram_quantile({q}, {buckets})"


def ratio(numerator: str, denominator: str) -> str:
    return f"({numerator}) / ({denominator})"


def mean(spec: MetricSpec, window: str, by: str = "") -> str:
    """A histogram's mean over the window: rate of its sum over rate of its count."""
    return ratio(rate(spec, window, by, suffix="_sum"), rate(spec, window, by, suffix="_count"))
