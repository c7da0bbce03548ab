"""Waiting for a replica to go idle: aborts and finishes reach the engine asynchronously."""

from __future__ import annotations

import time


def wait_for_idle(replica_handle, timeout_s: float = 30.0) -> dict:
    """The replica's stats once nothing runs, waits or holds KV blocks (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = replica_handle.stats.remote().result()
        idle = (
            stats["num_running"] == 0
            and stats["num_waiting"] == 0
            and stats["num_used_kv_blocks"] == 0
            and stats["num_active_streams"] == 0
        )
        if idle or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)
