"""The watcher's decisions: a notice becomes one PREEMPTION drain with a deadline the safety
margin before the notice's end; failures are counted and retried; metrics and logs follow."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client import CollectorRegistry

from serve_app import metrics
from serve_app.preemption.config import load_watcher_config
from serve_app.preemption.drain import DrainError, DrainResult
from serve_app.preemption.notices import AwsSpotNotices, NoticeSourceError, PreemptionNotice
from serve_app.preemption.watcher import Decision, PreemptionWatcher, WatcherMetrics
from tests.serve_app.preemption.fake_metadata_server import FakeMetadataServer

NOW = 1_800_000_000.0
NODE_ID = "ab" * 28


class ScriptedSource:
    """Answers each poll with the next scripted item (an exception is raised)."""

    name = "scripted"

    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    def poll(self) -> PreemptionNotice | None:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class RecordingDrainer:
    node_id = NODE_ID

    def __init__(self, *outcomes) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[float, str]] = []

    def drain(self, deadline_epoch_s: float, message: str) -> DrainResult:
        self.calls.append((deadline_epoch_s, message))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def make_watcher(source, drainer, margin_s: float = 10.0):
    registry = CollectorRegistry()
    watcher = PreemptionWatcher(
        source, drainer, WatcherMetrics.create(registry), margin_s, clock=lambda: NOW
    )
    return watcher, registry


def counter(registry: CollectorRegistry, spec: metrics.MetricSpec, **labels: str) -> float:
    return registry.get_sample_value(spec.series(), labels) or 0.0


def test_a_notice_drains_the_node_once_with_the_margin_before_its_end(caplog):
    notice = PreemptionNotice(NOW + 120, "terminate", "aws")
    drainer = RecordingDrainer(DrainResult(True, ""))
    watcher, registry = make_watcher(ScriptedSource(None, notice), drainer)
    caplog.set_level(logging.INFO, logger="serve_app.preemption")
    assert watcher.poll_once() is Decision.NO_NOTICE
    assert watcher.poll_once() is Decision.DRAINED
    [(deadline, message)] = drainer.calls
    assert deadline == NOW + 110
    assert "aws preemption notice: terminate" in message
    assert counter(registry, metrics.PREEMPTION_POLLS, outcome="no_notice") == 1
    assert counter(registry, metrics.PREEMPTION_POLLS, outcome="notice") == 1
    assert counter(registry, metrics.PREEMPTION_NOTICES) == 1
    assert counter(registry, metrics.PREEMPTION_DRAINS, result="accepted") == 1
    assert f"node {NODE_ID} is draining" in caplog.text
    assert "deadline in 110.0 s" in caplog.text


def test_a_notice_already_past_its_margin_drains_with_a_deadline_of_now():
    notice = PreemptionNotice(NOW + 3, "terminate", "gcp")
    drainer = RecordingDrainer(DrainResult(True, ""))
    watcher, _ = make_watcher(ScriptedSource(notice), drainer)
    watcher.poll_once()
    assert drainer.calls[0][0] == NOW


def test_a_failed_drain_is_retried_on_the_next_poll_and_counted():
    notice = PreemptionNotice(NOW + 120, "terminate", "aws")
    drainer = RecordingDrainer(
        DrainError("GCS unreachable"), DrainResult(False, "node unknown"), DrainResult(True, "")
    )
    watcher, registry = make_watcher(ScriptedSource(notice, notice, notice), drainer)
    assert [watcher.poll_once() for _ in range(3)] == [
        Decision.DRAIN_FAILED,
        Decision.DRAIN_FAILED,
        Decision.DRAINED,
    ]
    assert counter(registry, metrics.PREEMPTION_NOTICES) == 1  # one notice, polled three times
    assert counter(registry, metrics.PREEMPTION_DRAINS, result="error") == 1
    assert counter(registry, metrics.PREEMPTION_DRAINS, result="rejected") == 1
    assert counter(registry, metrics.PREEMPTION_DRAINS, result="accepted") == 1


def test_an_unreadable_source_is_counted_and_logged_not_drained(caplog):
    drainer = RecordingDrainer()
    watcher, registry = make_watcher(ScriptedSource(NoticeSourceError("aws: down")), drainer)
    assert watcher.poll_once() is Decision.SOURCE_ERROR
    assert drainer.calls == []
    assert counter(registry, metrics.PREEMPTION_POLLS, outcome="error") == 1
    assert "cannot read the notice: aws: down" in caplog.text


def test_run_stops_polling_once_drained():
    notice = PreemptionNotice(NOW + 60, "terminate", "file")
    source = ScriptedSource(None, None, notice, AssertionError("polled after the drain"))
    watcher, _ = make_watcher(source, RecordingDrainer(DrainResult(True, "")))
    assert watcher.run(poll_interval_s=0.001) is True
    assert watcher.drained


@pytest.mark.parametrize("margin_s", [0.0, 25.0])
def test_deadline_is_the_notice_end_less_the_margin(margin_s):
    watcher, _ = make_watcher(ScriptedSource(), RecordingDrainer(), margin_s)
    notice = PreemptionNotice(NOW + 30, "preempt", "gcp")
    assert watcher.drain_deadline(notice) == NOW + 30 - margin_s


def test_cli_rejects_an_invalid_config_with_exit_status_2(capsys):
    from serve_app.preemption.__main__ import main

    assert main(["--provider", "azure", "--poll-interval-s", "0"]) == 2
    error = capsys.readouterr().err
    assert "provider: Input should be 'aws', 'gcp' or 'file'" in error
    assert "poll_interval_s: Input should be greater than 0" in error


def test_an_aws_notice_served_over_http_becomes_a_drain_deadline_before_its_time():
    with FakeMetadataServer() as metadata, httpx.Client(trust_env=False) as http:
        config = load_watcher_config({"provider": "aws", "metadata_url": metadata.url})
        drainer = RecordingDrainer(DrainResult(True, ""))
        watcher, _ = make_watcher(AwsSpotNotices(config, http), drainer, margin_s=15)
        assert watcher.poll_once() is Decision.NO_NOTICE
        metadata.state.aws_notice = {"action": "terminate", "time": "2027-01-15T08:22:00Z"}
        assert watcher.poll_once() is Decision.DRAINED
    termination = datetime(2027, 1, 15, 8, 22, tzinfo=UTC).timestamp()
    assert drainer.calls[0][0] == termination - 15


def test_cli_with_no_gcs_at_its_address_names_the_ray_address_flag_at_once():
    """Before: Ray's GcsClient retried for ~40 s, then the error named no flag (and Ray's own
    'no cluster found' message names `--address`, a flag this command does not have). In a
    process of its own, as run: the watcher may set RAY_AUTH_MODE in its environment."""
    from tests.serve_app.conftest import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k not in ("SERVE_APP_DEBUG", "RAY_ADDRESS")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.preemption", "--provider", "file",
         "--trigger-file", "/nonexistent/notice", "--metrics-port", "0",
         "--ray-address", address],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert time.monotonic() - started < 15
    [line] = done.stderr.splitlines()
    assert line == (
        f"serve_app.preemption: ray_address: nothing answers at {address}; pass --ray-address "
        "host:port of a running cluster's GCS"
    )
