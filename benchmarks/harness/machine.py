"""The machine a benchmark ran on, for its report: CPU model, cores (all and usable), memory,
its NVIDIA GPUs (when ``nvidia-smi`` answers), platform and Python; and how fast it is right now
(:func:`host_probe_ms`)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gpus() -> list[str]:
    """``name, memory, driver`` of each NVIDIA GPU ``nvidia-smi`` lists; none without it."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "gpus": gpus(),
    }


def usable_cores() -> int:
    """The cores this process may run on (its affinity), without asking ``nvidia-smi``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_probe_ms(rounds: int = 9) -> float:
    """Milliseconds for a fixed piece of work on one core (float32 matrix products, FFTs and a
    pure-Python loop, as the server's stages mix them), the median of ``rounds``: a shared host
    whose neighbours are busy is slower by the same work, invisibly to the CPU counters (no
    steal time), and a run's figures move with it. Taken at a run's start and end, it tells a
    slower host from a slower build."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((160, 160)).astype(np.float32)
    signal = rng.standard_normal(8192)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(40):
            matrix @ matrix
            np.fft.rfft(signal)
            sum(i * i for i in range(3000))
        times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 2)
