"""The server under test as a subprocess: ``python -m voice serve`` on a free loopback port,
ready when it prints ``READY``, stopped with SIGINT; its output goes to a log file."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

PATHS = {"realtime": "/v1/realtime", "twilio": "/v1/twilio/media-stream"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _default_sigint() -> None:
    """In the child: SIGINT may be ignored when run in the background; restore it for stop()."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LocalServer:
    """``python -m voice serve`` as a subprocess; its output goes to a log file."""

    def __init__(self, settings: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._ready = threading.Event()
        self._log = log_path.open("w")
        command = [sys.executable, "-m", "voice", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
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
        return f"ws://127.0.0.1:{self.port}{PATHS[protocol]}"

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
