"""A new replica's cold start on the fake cluster, split into its parts, from Ray's own logs
in the cluster's session directory plus the moment the test saw the new node alive.

  decision      Serve's controller logs "Upscaling Deployment(name='ModelReplica' ..."
  node request  the autoscaler logs "Launching 1 nodes of type <type>"
  node start    the node registers with the GCS (the test polls for it)
  worker start  the replica logs "Started initializing replica." (a Ray worker process
                started and imported the deployment's code: Ray, Serve, torch, serve_app)
  engine build  the replica logs "Finished initializing replica." (weights, KV cache,
                warm-up: the AsyncEngine constructor)
  first call    the first generate_batch reaches it (its logged end minus its duration)
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}),(\d{3})")
CALL_OK = re.compile(r"CALL generate_batch OK ([\d.]+)ms")


def log_time(line: str) -> float | None:
    found = TIMESTAMP.search(line)
    if found is None:
        return None
    seconds = time.mktime(time.strptime(found.group(1), "%Y-%m-%d %H:%M:%S"))
    return seconds + int(found.group(2)) / 1000


def first_line_time(paths: list[Path], needle: str, after: float = 0.0) -> float | None:
    times = []
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            moment = log_time(line) if needle in line else None
            if moment is not None and moment >= after:
                times.append(moment)
    return min(times, default=None)


@dataclass(frozen=True)
class ColdStart:
    decision: float
    node_requested: float
    node_alive: float
    worker_started: float
    engine_built: float
    first_call: float

    def rows(self) -> list[tuple[str, float]]:
        moments = [
            ("scale-up decision -> node requested", self.decision, self.node_requested),
            ("node start (launch -> registered)", self.node_requested, self.node_alive),
            ("Ray worker start + imports", self.node_alive, self.worker_started),
            ("engine build (weights, KV, warm-up)", self.worker_started, self.engine_built),
            ("RUNNING -> first call routed", self.engine_built, self.first_call),
        ]
        return [(name, end - start) for name, start, end in moments]

    def total_s(self) -> float:
        return self.first_call - self.decision


def measure(logs: Path, node_type: str, node_alive: float, after: float) -> ColdStart:
    """The first scale-up after `after` (a wall-clock time), from the session's logs."""
    controller = sorted((logs / "serve").glob("controller_*.log"))
    decision = first_line_time(controller, "Upscaling Deployment(name='ModelReplica'", after)
    assert decision is not None, "no upscale decision in the controller's log"
    launched = first_line_time(
        [logs / "monitor.log"], f"Launching 1 nodes of type {node_type}", decision
    )
    assert launched is not None, f"no {node_type} launch in the autoscaler's log"
    replica_logs = sorted((logs / "serve").glob("replica_llm_ModelReplica_*.log"))
    started = first_line_time(replica_logs, "Started initializing replica.", node_alive)
    assert started is not None, "no replica started on the new node"
    [replica_log] = [
        path
        for path in replica_logs
        if first_line_time([path], "Started initializing replica.", started) == started
    ]
    built = first_line_time([replica_log], "Finished initializing replica.", started)
    assert built is not None
    return ColdStart(decision, launched, node_alive, started, built, _first_call(replica_log))


def _first_call(replica_log: Path) -> float:
    starts = []
    for line in replica_log.read_text(errors="replace").splitlines():
        found = CALL_OK.search(line)
        ended = log_time(line)
        if found and ended is not None:
            starts.append(ended - float(found.group(1)) / 1000)
    assert starts, f"no call reached {replica_log.name}"
    return min(starts)
