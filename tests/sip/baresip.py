"""A real softphone for the tests: baresip (Debian), driven over its TCP control socket.

Its microphone is a WAV file (``aufile``), what it hears is recorded (``sndfile`` writes the
decoded far-end audio as ``dump-*-dec.wav``), and commands (``dial``, ``hangup``, ``sndcode``)
go over ``ctrl_tcp`` as netstring-framed JSON; its events (call established, closed …) come
back on the same socket. Everything on loopback, free ports only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODULES = "/usr/lib/baresip/modules"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def write_wav(path: Path, audio: np.ndarray, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype(np.int16).tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


class Baresip:
    """One baresip process: ``async with Baresip(tmp, microphone) as phone: await phone.dial()``."""

    def __init__(self, folder: Path, microphone: np.ndarray) -> None:
        if shutil.which("baresip") is None:
            pytest.fail("baresip is required (make test installs it)")
        self.folder = folder
        self.ctrl_port = free_port()
        self.sip_port = free_udp_port()
        self.events: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        self.output: list[str] = []
        write_wav(folder / "microphone.wav", microphone)
        (folder / "recordings").mkdir()
        (folder / "config").write_text(self._config())
        (folder / "accounts").write_text(
            f"<sip:caller@127.0.0.1:{self.sip_port}>;regint=0;audio_codecs=PCMU,PCMA\n"
        )

    def _config(self) -> str:
        return "\n".join(
            [
                f"module_path {MODULES}",
                f"sip_listen 127.0.0.1:{self.sip_port}",
                f"audio_source aufile,{self.folder / 'microphone.wav'}",
                "audio_player aufile,/dev/null",
                "audio_alert aufile,/dev/null",
                f"snd_path {self.folder / 'recordings'}",
                f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
                "rtp_ports 20000-40000",
                "jitter_buffer_delay 1-10",
                "module g711.so",
                "module aufile.so",
                "module sndfile.so",
                "module_app account.so",
                "module_app menu.so",
                "module_app ctrl_tcp.so",
                "",
            ]
        )

    async def __aenter__(self) -> Baresip:
        self._process = await asyncio.create_subprocess_exec(
            "baresip",
            "-f",
            str(self.folder),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        ready = asyncio.Event()
        self._log = asyncio.create_task(self._read_log(ready))
        async with asyncio.timeout(20):
            await ready.wait()
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
        self._task = asyncio.create_task(self._read_ctrl())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._task,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            self._writer.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._log is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._log
        (self.folder / "baresip.log").write_text("".join(self.output))

    async def _read_log(self, ready: asyncio.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            text = line.decode(errors="replace")
            self.output.append(text)
            if "baresip is ready" in text:
                ready.set()

    async def _read_ctrl(self) -> None:
        assert self._reader is not None
        while True:
            length = await self._reader.readuntil(b":")
            payload = await self._reader.readexactly(int(length[:-1]))
            await self._reader.readexactly(1)  # the netstring's ','
            message = json.loads(payload)
            async with self._changed:
                if message.get("event"):
                    self.events.append(message)
                else:
                    self.responses.append(message)
                self._changed.notify_all()

    async def command(self, command: str, params: str = "") -> None:
        assert self._writer is not None
        data = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(str(len(data)).encode() + b":" + data + b",")
        await self._writer.drain()

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    async def wait_event(self, kind: str, within: float) -> dict[str, Any]:
        """The first event of type ``kind`` (``CALL_ESTABLISHED``, ``CALL_CLOSED`` …)."""

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("type") == kind), None)

        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(
                f"baresip: no {kind} within {within} s; events {self.events[-10:]};"
                f" log tail {''.join(self.output)[-2000:]}"
            ) from None
        event = found()
        assert event is not None
        return event

    def recording(self) -> tuple[np.ndarray, int]:
        """What baresip heard from the far end (the decoded audio sndfile wrote)."""
        files = sorted((self.folder / "recordings").glob("*dec.wav"))
        assert files, f"no recording in {list((self.folder / 'recordings').iterdir())}"
        return read_wav(files[0])
