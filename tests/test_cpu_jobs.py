"""The engines' shared count of jobs on the CPU (``_cpu.py``): a job may use several threads
only when it runs alone."""

from __future__ import annotations

import threading

import pytest

from pipeline.engines._cpu import CpuJobs


def test_jobs_are_counted_while_they_run_and_after_an_error() -> None:
    cpu = CpuJobs()
    assert cpu.alone() and cpu.running == 0
    with cpu.job():
        assert not cpu.alone() and cpu.running == 1
        with cpu.job():
            assert cpu.running == 2
    assert cpu.alone()
    with pytest.raises(RuntimeError), cpu.job():
        raise RuntimeError("an engine failed")
    assert cpu.alone()


def test_jobs_in_many_threads_leave_the_count_at_zero() -> None:
    cpu = CpuJobs()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait(timeout=30)
        for _ in range(2000):
            with cpu.job():
                assert cpu.running >= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert cpu.alone()
