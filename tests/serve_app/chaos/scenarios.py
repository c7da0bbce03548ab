"""The chaos matrix's faults and the numbers its test checks rows against, shared by the
runner (run_chaos.py) and the test (test_spot_chaos.py). Free of side effects: run_chaos
sets a Ray environment variable on import, which the test process must not inherit."""

from __future__ import annotations

# The one failover reason each fault may cause: a crash is resumed from the last token
# the batcher saw, a drain is a hand-back (serve_app/batcher/failover.py).
REASONS = {
    "kill_replica": "replica_died",
    "node_lost": "replica_died",
    "drain_5s": "node_drained",
    "aws_notice": "node_drained",
    "gcp_notice": "node_drained",
}
SCENARIOS = tuple(REASONS)
CLIENTS = 12  # closed-loop streaming clients
# A fault waits until its victim holds this many long requests mid-stream (run_chaos.py).
MID_STREAM = 2
