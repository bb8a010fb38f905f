"""How busy the CPU was during a concurrency level: the server's own CPU time (with its
children's), the harness's (its callers share the cores with the server), and the whole host's.

Whether a level's latency is queueing or work: at the level where the server already takes
about every core, a higher p95 is the queue of a saturated box, and what a turn costs in
CPU (``server_ms_per_turn``) is what capacity divides. Unlike latency, that cost barely moves
with the host's noise, so two configurations' CPU per turn compare in a short run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Cumulative CPU seconds at one moment."""

    server_s: float | None
    """The server process and its children (``None``: no server of the harness's own)."""
    harness_s: float
    host_busy_s: float
    """Every core's non-idle time (the whole machine, every process)."""
    host_total_s: float


def process_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and of its live and reaped children."""
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                c = child.cpu_times()
                total += c.user + c.system
        return total
    except psutil.NoSuchProcess:
        return None


def sample(server_pid: int | None) -> CpuSample:
    own = psutil.Process().cpu_times()
    host = psutil.cpu_times()
    idle = host.idle + getattr(host, "iowait", 0.0)
    total = sum(host)
    if hasattr(host, "guest"):  # (already counted in user on Linux)
        total -= host.guest + getattr(host, "guest_nice", 0.0)
    return CpuSample(
        server_s=process_seconds(server_pid) if server_pid is not None else None,
        harness_s=own.user + own.system,
        host_busy_s=total - idle,
        host_total_s=total,
    )


def level_cpu(
    start: CpuSample, end: CpuSample, wall_s: float, turns: int, cores: int
) -> dict[str, Any]:
    """What a level used between two samples: cores' worth of each (CPU seconds / wall
    seconds), the host's busy share of all its cores, and the server's CPU per answered turn."""
    if wall_s <= 0:
        return {"server_cores": None, "harness_cores": None, "host_busy": None}
    server = None
    if start.server_s is not None and end.server_s is not None:
        server = max(0.0, end.server_s - start.server_s)
    host_total = end.host_total_s - start.host_total_s
    host_busy = (end.host_busy_s - start.host_busy_s) / host_total if host_total > 0 else None
    return {
        "server_cores": None if server is None else round(server / wall_s, 3),
        "harness_cores": round(max(0.0, end.harness_s - start.harness_s) / wall_s, 3),
        "host_busy": None if host_busy is None else round(min(1.0, max(0.0, host_busy)), 3),
        "host_cores": cores,
        "server_ms_per_turn": (
            None if server is None or turns <= 0 else round(1000.0 * server / turns, 1)
        ),
    }
