"""The server under test when a benchmark starts it itself (:class:`LocalServer`):
``python -m voice serve`` on a free loopback port with the configuration's ``--set`` flags, ready
once it prints ``READY``, stopped with SIGINT, its output in a log file; and the named
configurations to A/B."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

READY_TIMEOUT_S = 300.0
PATHS = {
    "realtime": "/v1/realtime",
    "twilio": "/v1/twilio/media-stream",
    "webrtc": "/v1/realtime/calls",  # an HTTP POST of an SDP offer
}
LOOPBACK = "127.0.0.1"


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint(host: str, port: int, protocol: str) -> str:
    """Where a caller of ``protocol`` reaches a server (WebRTC: the URL its offer is posted to)."""
    scheme = "http" if protocol == "webrtc" else "ws"
    return f"{scheme}://{host}:{port}{PATHS[protocol]}"


def _default_sigint() -> None:
    """In the child: SIGINT may be ignored when run in the background; restore it for stop()."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LocalServer:
    """``python -m voice serve`` as a subprocess; its output goes to a log file."""

    def __init__(self, settings: dict[str, str], log_path: Path, host: str = LOOPBACK) -> None:
        """``host`` other than loopback: an address only a private network namespace has (the
        harness's WebRTC runs), so the server may go without API keys there."""
        self.host = host
        self.port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.log_path = log_path
        self._ready = threading.Event()
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "voice", "serve", "--host", host]
        command += ["--port", str(self.port)]
        command += ["--set", f"sip.port={self.sip_port}"]  # servers run side by side
        if host != LOOPBACK:
            command += ["--set", "server.allow_unauthenticated=true"]
        for key, value in settings.items():
            command += ["--set", f"{key}={value}"]
        self.command = command
        self.started = time.perf_counter()
        self.ready_s: float | None = None
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            text=True,
            preexec_fn=_default_sigint,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def url(self, protocol: str) -> str:
        if protocol in ("sip", "baresip"):
            return f"sip:agent@{LOOPBACK}:{self.sip_port}"  # (sip.host: loopback)
        return endpoint(self.host, self.port, protocol)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("READY"):
                self.ready_s = round(time.perf_counter() - self.started, 2)
                self._ready.set()
            with contextlib.suppress(ValueError):  # closed by stop()
                self._log.write(line)
                self._log.flush()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.5):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the server was not READY after {timeout:.0f} s:\n{self.tail()}"
                )

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(ValueError):
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float | None:
        """Resident memory of the server and its children (MB)."""
        try:
            proc = psutil.Process(self.proc.pid)
            total = 0
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            return round(total / 2**20, 1)
        except psutil.NoSuchProcess:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


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
    "vad.early_pause_db": "0",
    "vad.pause_on_onset": "false",
    "pipeline.first_clause_words": "0",
    "asr.fit_window": "false",
    "vad.eot_llm": "false",
    "pipeline.interim_asr_ms": "0",
    "pipeline.trim_leading_silence": "false",
    "pipeline.starved_cut_ms": "0",
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
