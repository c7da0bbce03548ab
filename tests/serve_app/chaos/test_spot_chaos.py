"""The chaos matrix of spot tolerance (run_chaos.py, in its own process: it runs its own Ray
cluster of several nodes). Under steady streaming load, for each fault (a replica killed,
a node lost without notice, a node drained with a 5 s deadline, the preemption watcher
fed an AWS and a GCP spot notice), injected once the replica it hits holds MID_STREAM long
requests mid-stream: no request fails, every greedy and seeded answer is the fault-free
one byte for byte with the same usage, and the failovers are counted, each request caught
on the victim at least once and for the fault's reason only: a crash as `replica_died`, a
drain as `node_drained` (requests handed back before the deadline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_app.chaos.scenarios import CLIENTS, MID_STREAM, REASONS

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("chaos") / "rows.json"
    command = [sys.executable, "-m", "tests.serve_app.chaos.run_chaos", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=480)
    print(done.stdout)
    print("".join(line for line in done.stderr.splitlines(True) if line.startswith("[chaos")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return {row["scenario"]: row for row in json.loads(out.read_text())}


@pytest.mark.parametrize("scenario", list(REASONS))
def test_a_fault_under_load_loses_no_request_and_changes_no_token(rows, scenario):
    row = rows[scenario]
    assert row["failed"] == 0, row["errors"]
    assert row["requests"] >= 2 * CLIENTS  # the load ran through the fault
    assert row["greedy_identical"] == row["greedy"] and row["greedy"] > 0
    assert row["seeded_identical"] == row["seeded"] and row["seeded"] > 0
    assert row["usage_identical"] == row["requests"]
    reason = REASONS[scenario]
    # Every request caught mid-stream on the victim failed over, for this fault's reason.
    assert row["failovers"].get(reason, 0) >= row["victim_mid_stream"] >= MID_STREAM, row
    others = {other: count for other, count in row["failovers"].items() if other != reason}
    assert not any(others.values()), row["failovers"]
