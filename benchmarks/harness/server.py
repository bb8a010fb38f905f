"""The server under test when the harness starts it itself: ``python -m voice serve`` on a free
port with the configuration's ``--set`` flags, ready once it prints ``READY``, stopped with
SIGINT; and the named configurations to A/B."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

READY_TIMEOUT_S = 300.0

REFERENCE = {
    "pipeline.early_asr": "false",
    "pipeline.first_clause_chars": "1000",
    "pipeline.min_clause_chars": "1000",
}
"""The reference configuration: the server without its latency optimizations (same models, no
early ASR, sentence-level TTS, a fixed silence)."""
REFERENCE_IF_KNOWN = {
    "pipeline.speculative_reply": "false",
    "vad.eot_adaptive": "false",
    "vad.pause_on_onset": "false",
    "pipeline.first_clause_words": "0",
    "asr.fit_window": "false",
    "vad.eot_llm": "false",
    "pipeline.interim_asr_ms": "0",
    "pipeline.trim_leading_silence": "false",
}
"""Also part of the reference, where the server's ``voice config`` knows them (older servers
predate some of these switches)."""


@dataclass(slots=True)
class NamedConfig:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """Reference keys this server does not know (left out)."""


def parse_config(text: str) -> NamedConfig:
    """``NAME=SECTION.KEY=VALUE,SECTION.KEY=VALUE`` (``NAME=`` or ``NAME``: the defaults)."""
    name, _, rest = text.partition("=")
    name = name.strip()
    if not name or "." in name:
        raise ValueError(f"--config {text!r}: expected NAME=SECTION.KEY=VALUE,...")
    settings: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--config {text!r}: {item!r} is not SECTION.KEY=VALUE")
        settings[key.strip()] = value.strip()
    return NamedConfig(name, settings)


def server_keys(python: str = sys.executable) -> set[str]:
    """Every ``section.key`` the installed server knows, from ``python -m voice config``."""
    out = subprocess.run(
        [python, "-m", "voice", "config"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    keys, section = set(), ""
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and section:
            keys.add(f"{section}.{line.split('=', 1)[0].strip()}")
    return keys


def default_configs(known: set[str]) -> list[NamedConfig]:
    """``optimized`` (the server's defaults) and ``reference`` (its optimizations off)."""
    reference = NamedConfig("reference", dict(REFERENCE))
    for key, value in REFERENCE_IF_KNOWN.items():
        if key in known:
            reference.settings[key] = value
        else:
            reference.skipped.append(key)
    return [NamedConfig("optimized"), reference]


def unknown_keys(configs: list[NamedConfig], known: set[str]) -> list[str]:
    return sorted({k for c in configs for k in c.settings if k not in known})
