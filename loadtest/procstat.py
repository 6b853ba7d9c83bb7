"""CPU time of a process and its descendants, from /proc (Linux), for CPU per request."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and every live descendant (the proxy's --processes workers, say)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            queue += children(current)
        except OSError:
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its live descendants so far."""
    total = 0.0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    return total
