"""The watcher's loop: poll the notice source; on a notice, drain this Ray node once.

Each poll is one decision, counted in Prometheus (names in serve_app/metrics.py) and logged:
no notice (debug), a notice and the drain it led to (warning), a source or drain failure
(error). A failed drain is retried on the next poll; after an accepted one the loop ends.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from serve_app import metrics
from serve_app.preemption.drain import DrainError, DrainResult
from serve_app.preemption.notices import Clock, NoticeSource, NoticeSourceError, PreemptionNotice

logger = logging.getLogger(__name__)


POLL_OUTCOMES = ("no_notice", "notice", "error")
DRAIN_RESULTS = ("accepted", "rejected", "error")


class Decision(StrEnum):
    NO_NOTICE = "no_notice"
    DRAINED = "drained"
    DRAIN_FAILED = "drain_failed"
    SOURCE_ERROR = "source_error"


class Drainer(Protocol):
    node_id: str

    def drain(self, deadline_epoch_s: float, message: str) -> DrainResult: ...


@dataclass(frozen=True)
class WatcherMetrics:
    polls: Counter
    notices: Counter
    drains: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WatcherMetrics:
        """The watcher's counters (specs in serve_app/metrics.py), every label value at 0."""

        def counter(spec: metrics.MetricSpec, values: tuple[str, ...] = ()) -> Counter:
            created = Counter(spec.name, spec.description, spec.labels, registry=registry)
            for value in values:
                created.labels(value)
            return created

        return cls(
            polls=counter(metrics.PREEMPTION_POLLS, POLL_OUTCOMES),
            notices=counter(metrics.PREEMPTION_NOTICES),
            drains=counter(metrics.PREEMPTION_DRAINS, DRAIN_RESULTS),
        )


class PreemptionWatcher:
    """Turns the first preemption notice into a PREEMPTION drain of `drainer`'s node.

    The drain deadline is the notice's end less `safety_margin_s`, so the batcher and Serve
    finish moving work before the machine disappears.
    """

    def __init__(
        self,
        source: NoticeSource,
        drainer: Drainer,
        watcher_metrics: WatcherMetrics,
        safety_margin_s: float,
        clock: Clock = time.time,
    ):
        self.source = source
        self.drainer = drainer
        self.metrics = watcher_metrics
        self.safety_margin_s = safety_margin_s
        self.clock = clock
        self.notice: PreemptionNotice | None = None  # the first notice seen
        self.drained = False

    def drain_deadline(self, notice: PreemptionNotice) -> float:
        """When the node must be empty: the notice's end less the margin, never in the past."""
        return max(notice.terminates_at - self.safety_margin_s, self.clock())

    def poll_once(self) -> Decision:
        try:
            notice = self.source.poll()
        except NoticeSourceError as error:
            self.metrics.polls.labels(outcome="error").inc()
            logger.error("preemption watcher: cannot read the notice: %s", error)
            return Decision.SOURCE_ERROR
        if notice is None:
            self.metrics.polls.labels(outcome="no_notice").inc()
            logger.debug("preemption watcher: no notice from %s", self.source.name)
            return Decision.NO_NOTICE
        self.metrics.polls.labels(outcome="notice").inc()
        if self.notice is None:
            self.notice = notice
            self.metrics.notices.inc()
        return self._drain(self.notice)

    def run(self, poll_interval_s: float, stop: threading.Event | None = None) -> bool:
        """Poll until the node is drained (True) or `stop` is set (False)."""
        stop = stop or threading.Event()
        logger.info(
            "preemption watcher: watching %s every %g s for node %s",
            self.source.name,
            poll_interval_s,
            self.drainer.node_id,
        )
        while not stop.is_set():
            if self.poll_once() is Decision.DRAINED:
                return True
            stop.wait(poll_interval_s)
        return False

    def _drain(self, notice: PreemptionNotice) -> Decision:
        deadline = self.drain_deadline(notice)
        node_id = self.drainer.node_id
        message = (
            f"{notice.source} preemption notice: {notice.action} at {notice.terminates_at:.0f}"
        )
        logger.warning(
            "preemption watcher: %s; draining node %s with a deadline in %.1f s",
            message,
            node_id,
            deadline - self.clock(),
        )
        try:
            result = self.drainer.drain(deadline, message)
        except DrainError as error:
            self.metrics.drains.labels(result="error").inc()
            logger.error("preemption watcher: %s; retrying on the next poll", error)
            return Decision.DRAIN_FAILED
        if not result.accepted:
            self.metrics.drains.labels(result="rejected").inc()
            logger.error(
                "preemption watcher: the GCS rejected the drain of node %s: %s",
                node_id,
                result.rejection_message,
            )
            return Decision.DRAIN_FAILED
        self.metrics.drains.labels(result="accepted").inc()
        logger.warning("preemption watcher: node %s is draining", node_id)
        self.drained = True
        return Decision.DRAINED
