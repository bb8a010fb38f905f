"""Which engine jobs are on the CPU right now, across engines, so a job uses several threads
only when it has the cores to itself.

llama.cpp and CTranslate2 split a job over their threads with OpenMP, whose threads meet at a
barrier after each operation. When another job holds one of the cores, the thread that waits
for it spins, then sleeps until the scheduler gives the other one its turn — hundreds of times
per step: with 8 callers on 2 cores a 6-token prompt step took 500 ms on two threads. So an
engine that could use more threads asks :meth:`CpuJobs.alone` first, and counts its own work
with :meth:`CpuJobs.job` so the others see it. One :class:`CpuJobs` is shared by the engines of a
server (``voice/engines.py``); thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CpuJobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        """Jobs on the CPU now."""
        return self._running

    def alone(self) -> bool:
        """Nothing else is on the CPU (a job about to start may use every thread it has)."""
        return self._running == 0

    @contextmanager
    def job(self) -> Iterator[None]:
        """Count the enclosed work as a job on the CPU."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
