"""CPU seconds per process from /proc, grouped by the role each plays in the Serve graph.

`snapshot()` reads the user + system CPU time of this process and of every process it
started (the Ray cluster it runs: other programs on the machine are left out);
`cpu_by_role(before, after)` sums the difference per role: the model replica, the
batcher, the ingress, Serve's proxy, this process (the load client, or the in-process
engine) and Ray's own daemons. Linux only.
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
    """This process and its descendants: pid -> (command line, user + system CPU seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    found, parents = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue  # the process ended
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        found[int(entry)] = (command.decode(errors="replace"), cpu_s)
        parents[int(entry)] = int(fields[1])
    return {pid: value for pid, value in found.items() if _descends_from_us(pid, parents)}


def _descends_from_us(pid: int, parents: dict[int, int]) -> bool:
    ours = os.getpid()
    while pid > 1:
        if pid == ours:
            return True
        pid = parents.get(pid, 0)
    return False


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
