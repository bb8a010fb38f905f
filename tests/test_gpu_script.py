"""``benchmarks/gpu.sh`` without a GPU: its syntax, and a ``--dry-run`` that checks every server
setting and bench argument it would use against this checkout (no GPU, nothing installed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_scripts_parse() -> None:
    for script in (SCRIPT, SCRIPT.with_name("gpu_kit.sh"), SCRIPT.with_name("gpu_kit_run.sh")):
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0, script


def test_a_dry_run_with_llama_cpp_checks_its_settings_and_runs_nothing() -> None:
    done = _run("--dry-run", "--whisper", "/models/whisper-small", "--gguf", "/models/q.gguf")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in out and "nvidia-cublas-cu12" in out
    assert "asr.device=cuda,asr.compute_type=float16" in out
    assert "llm.model_path=/models/q.gguf,llm.gpu_layers=999" in out
    assert "--config gpu-reference=" in out and "pipeline.early_asr=false" in out
    assert "--name gpu" in out


def test_a_dry_run_with_vllm_serves_the_model_behind_the_openai_engine() -> None:
    done = _run("--dry-run", "--whisper", "/m/w", "--vllm", "Qwen/Qwen2.5-1.5B-Instruct")
    assert done.returncode == 0, done.stderr
    assert "vllm serve Qwen/Qwen2.5-1.5B-Instruct" in done.stdout
    assert "llm.engine=openai,llm.base_url=http://127.0.0.1:" in done.stdout
    assert "GGML_CUDA" not in done.stdout


def test_bad_arguments_are_refused_before_anything_runs() -> None:
    assert "--whisper DIR" in _run("--dry-run", "--gguf", "/m/q.gguf").stderr
    both = _run("--dry-run", "--whisper", "/m/w", "--gguf", "/m/q", "--vllm", "x")
    assert both.returncode != 0 and "exclude each other" in both.stderr
    bad = _run("--dry-run", "--whisper", "/m/w", "--gguf", "/m/q.gguf", "--turns", "0")
    assert bad.returncode != 0 and "positive" in bad.stderr
