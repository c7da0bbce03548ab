"""Spot-preemption watcher: turns a cloud's preemption notice into a Ray node drain.

One runs on every worker node (`python -m serve_app.preemption --provider aws|gcp|file`):
it polls AWS IMDSv2 `spot/instance-action`, GCP `instance/preempted` or a local trigger
file, and drains its own Ray node with reason PREEMPTION and a deadline shorter than the
notice, so replacement replicas start and in-flight work moves before the machine goes.
"""

from serve_app.preemption.config import WatcherConfig, WatcherConfigError, load_watcher_config
from serve_app.preemption.notices import PreemptionNotice, notice_source
from serve_app.preemption.watcher import Decision, PreemptionWatcher, WatcherMetrics

__all__ = [
    "Decision",
    "PreemptionNotice",
    "PreemptionWatcher",
    "WatcherConfig",
    "WatcherConfigError",
    "WatcherMetrics",
    "load_watcher_config",
    "notice_source",
]
