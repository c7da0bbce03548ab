"""CPU seconds per process from /proc, grouped by the role each plays in the Serve graph.

`snapshot()` reads every process's user + system CPU time; `cpu_by_role(before, after)`
sums the difference per role: the model replica, the batcher, the ingress, Serve's proxy,
this process (the load client, or the in-process engine) and Ray's own daemons. Linux only.
"""

from __future__ import annotations

import os
from pathlib import Path

# Substrings of a process's command line -> its role, first match wins.
ROLE_PATTERNS = [
    ("ModelReplica", "replica"),
    ("TensorParallelActor", "replica"),
    ("Batcher", "batcher"),
    ("OpenAIIngress", "ingress"),
    ("ProxyActor", "proxy"),
]
THIS_PROCESS = "this process"
RAY_DAEMONS = "ray daemons"


def snapshot() -> dict[int, tuple[str, float]]:
    """Every readable process: pid -> (command line, user + system CPU seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # the process ended
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        found[int(entry)] = (command.decode(errors="replace"), cpu_s)
    return found


def role_of(pid: int, command: str) -> str:
    if pid == os.getpid():
        return THIS_PROCESS
    for pattern, role in ROLE_PATTERNS:
        if pattern in command:
            return role
    return RAY_DAEMONS if "ray" in command else "other"


def cpu_by_role(before: dict, after: dict) -> dict[str, float]:
    """CPU seconds used between the snapshots, summed per role."""
    used: dict[str, float] = {}
    for pid, (command, cpu_s) in after.items():
        delta = cpu_s - before.get(pid, (command, 0.0))[1]
        if delta > 0:
            role = role_of(pid, command)
            used[role] = used.get(role, 0.0) + delta
    return used
