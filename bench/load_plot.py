"""The PNG of a load test: latency distributions and TTFT over the run (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from bench.load_stats import LoadReport, RequestRecord


def save_plot(records: list[RequestRecord], report: LoadReport, title: str, path: Path) -> None:
    ok = [record for record in records if record.ok]
    start = min((record.sent_s for record in records), default=0.0)
    figure, (cdf_axes, itl_axes, time_axes) = plt.subplots(1, 3, figsize=(16, 4.5))

    for name, values in (
        ("TTFT", [record.ttft_s for record in ok]),
        ("E2E", [record.e2e_s for record in ok]),
    ):
        ordered = sorted(value * 1000 for value in values)
        fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
        cdf_axes.step(ordered, fractions, where="post", label=name)
    cdf_axes.set(xlabel="latency (ms)", ylabel="fraction of requests", title="CDF")
    cdf_axes.legend()

    itl_ms = [gap * 1000 for record in ok for gap in record.itl_s]
    tpot_ms = [record.tpot_s * 1000 for record in ok if record.tpot_s is not None]
    itl_axes.hist([itl_ms, tpot_ms], bins=40, label=["ITL", "TPOT"])
    itl_axes.set(xlabel="ms", ylabel="count", title="inter-token latency and TPOT")
    itl_axes.legend()

    time_axes.scatter(
        [record.sent_s - start for record in ok],
        [record.ttft_s * 1000 for record in ok],
        s=8,
        label="TTFT",
    )
    failed = [record.sent_s - start for record in records if not record.ok]
    if failed:
        time_axes.scatter(failed, [0] * len(failed), s=16, marker="x", color="red", label="error")
    time_axes.set(xlabel="request sent at (s)", ylabel="TTFT (ms)", title="TTFT over the run")
    time_axes.legend()

    figure.suptitle(
        f"{title}: {report.request_throughput:.2f} req/s, "
        f"{report.output_token_throughput:.0f} output tok/s, {report.num_errors} errors"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
