"""The chaos matrix of spot tolerance (run_chaos.py, in its own process: it runs its own Ray
cluster of several nodes). Under steady streaming load, for each fault (a replica killed,
a node lost without notice, a node drained with a 10 s deadline, the preemption watcher
fed an AWS and a GCP spot notice): no request fails, every greedy and seeded answer is the
fault-free one byte for byte with the same usage, and the failovers are counted: a crash
as `replica_died`, a drain as `node_drained` (requests handed back before the deadline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[3]
CRASHES = {"kill_replica", "node_lost"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("chaos") / "rows.json"
    command = [sys.executable, "-m", "tests.serve_app.chaos.run_chaos", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=480)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {row["scenario"]: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize(
    "scenario", ["kill_replica", "node_lost", "drain_10s", "aws_notice", "gcp_notice"]
)
def test_a_fault_under_load_loses_no_request_and_changes_no_token(rows, scenario):
    row = rows[scenario]
    assert row["failed"] == 0, row["errors"]
    assert row["requests"] >= 2 * 12  # the load ran through the fault
    assert row["greedy_identical"] == row["greedy"] and row["greedy"] > 0
    assert row["seeded_identical"] == row["seeded"] and row["seeded"] > 0
    assert row["usage_identical"] == row["requests"]
    reason = "replica_died" if scenario in CRASHES else "node_drained"
    assert row["failovers"].get(reason, 0) >= 1, row["failovers"]
