"""``voice bench``'s CPU figures per concurrency level: what the server process tree used, on a
real process tree burning a known amount of CPU, and how a level's figures are derived and
reported (the runs themselves are ``benchmarks/``'s)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from benchmarks.harness.bench import finish_config
from benchmarks.harness.cpu import CpuSample, level_cpu, sample
from benchmarks.harness.report import summary_text
from benchmarks.harness.stats import summarize
from benchmarks.harness.timeline import REALTIME

BURN = """
import subprocess, sys, time
if sys.argv[1] == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child"], stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"burnt\\n"
    print("burnt", flush=True)
    sys.stdin.read()
    child.kill()
else:
    while time.process_time() < 0.4:
        pass
    print("burnt", flush=True)
    time.sleep(120)
"""


def test_the_servers_cpu_counts_its_childrens() -> None:
    """A process whose child burnt 0.4 s of CPU: the tree's seconds include the child's."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BURN, "parent", BURN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"burnt\n"
        seen = sample(proc.pid)
        assert seen.server_s is not None and seen.server_s >= 0.4
        assert seen.harness_s > 0 and 0 < seen.host_busy_s < seen.host_total_s
    finally:
        proc.communicate(b"", timeout=30)
    assert sample(proc.pid).server_s is None  # (gone: no figure rather than a wrong one)
    assert sample(None).server_s is None


def test_a_levels_cpu_is_cores_worth_and_cost_per_answered_turn() -> None:
    start = CpuSample(server_s=10.0, harness_s=2.0, host_busy_s=100.0, host_total_s=400.0)
    end = CpuSample(server_s=40.0, harness_s=5.0, host_busy_s=136.0, host_total_s=440.0)
    cpu = level_cpu(start, end, wall_s=20.0, turns=12, cores=2)
    assert cpu == {
        "server_cores": 1.5,
        "harness_cores": 0.15,
        "host_busy": 0.9,
        "host_cores": 2,
        "server_ms_per_turn": 2500.0,
    }
    no_server = CpuSample(None, 2.0, 100.0, 400.0)
    cpu = level_cpu(no_server, CpuSample(None, 5.0, 136.0, 440.0), 20.0, 12, 2)
    assert cpu["server_cores"] is None and cpu["server_ms_per_turn"] is None
    assert level_cpu(start, end, wall_s=20.0, turns=0, cores=2)["server_ms_per_turn"] is None


def test_the_sweep_and_the_summary_report_the_cpu_of_each_level() -> None:
    def level(n: int, cores: float, per_turn: float) -> dict[str, Any]:
        summary = summarize([], REALTIME)
        summary["voice_to_voice_ms"] = {"p50": 600.0, "p95": 900.0}
        cpu = {"server_cores": cores, "harness_cores": 0.1, "host_busy": 0.5 * cores + 0.05}
        cpu |= {"host_cores": 2, "server_ms_per_turn": per_turn}
        return {"concurrency": n, "summary": summary, "cpu": cpu}

    config: dict[str, Any] = {
        "name": "default",
        "settings": {},
        "levels": [level(4, 1.2, 1800.0), level(8, 1.9, 1750.0)],
    }
    finish_config(config, cores=2)
    assert config["sweep"]["server_cores"] == {"4": 1.2, "8": 1.9}
    assert config["sweep"]["server_ms_per_turn"] == {"4": 1800.0, "8": 1750.0}
    assert config["summary"]["server_cpu"]["server_ms_per_turn"] == 1800.0
    machine = {"cpu": "x", "usable_cores": 2, "cores": 2, "platform": "p", "python": "3"}
    probe = {"start": 20.5, "end": 23.1}
    report = {"machine": machine, "protocol": REALTIME, "configs": [config], "host_probe_ms": probe}
    text = summary_text(report)
    assert "20.5 at the start, 23.1 at the end" in text
    assert "x4: 1.20 cores (1800 ms a turn, host 65 % busy)" in text
    assert "x8: 1.90 cores (1750 ms a turn, host 100 % busy)" in text
    assert "server CPU a turn (ms)" in text
