"""The machine line of a benchmark report: its NVIDIA GPUs when ``nvidia-smi`` answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.harness import machine
from benchmarks.harness.report import summary_text


def _fake_nvidia_smi(tmp_path: Path, body: str) -> Path:
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return tmp_path


def test_gpus_are_listed_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = _fake_nvidia_smi(tmp_path, 'echo "NVIDIA H200, 143771 MiB, 580.159.04"')
    monkeypatch.setenv("PATH", str(bin_dir))
    info = machine.machine_info()
    assert info["gpus"] == ["NVIDIA H200, 143771 MiB, 580.159.04"]
    report = {"machine": info, "protocol": "realtime", "configs": []}
    assert "GPU: NVIDIA H200, 143771 MiB, 580.159.04" in summary_text(report)


def test_no_gpu_when_nvidia_smi_is_absent_or_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert machine.gpus() == []
    monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path, "exit 9")))
    assert machine.gpus() == []
    report = {"machine": machine.machine_info(), "protocol": "realtime", "configs": []}
    assert "GPU" not in summary_text(report)
