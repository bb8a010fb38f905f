"""A real softphone: baresip (Debian's 1.0.0), driven over its TCP control socket.

Its microphone is a WAV file (``aufile``; the file is read whole when the source starts, and
the call ends when it runs out, so give it a long silent tail; ``ausrc aufile,FILE`` switches
a live call to another file), what it hears may be recorded (``sndfile`` writes the decoded
far-end audio as ``dump-*-dec.wav``), and commands (``dial``, ``hangup``, ``sndcode``,
``ausrc``) go over ``ctrl_tcp`` as netstring-framed JSON; its events (call established,
closed …) come back on the same socket. Everything on loopback, free ports only.

Used by the SIP tests (``tests/sip/baresip.py``) and by the benchmark's baresip caller
(``baresip_caller.py``).
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

MODULES = "/usr/lib/baresip/modules"
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3
"""baresip starts again on other ports when one it was given was taken in the meantime."""
PORT_TAKEN = "Address already in use"
MAX_DEVICE_CHARS = 127
"""baresip's ``ausrc`` command keeps at most this much of a device (a file path)."""


class SoftphoneError(RuntimeError):
    """baresip is missing, or would not start."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


def free_sip_port() -> int:
    """A loopback port free for UDP and TCP both (baresip listens on both at ``sip_listen``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise SoftphoneError("no loopback port is free for both UDP and TCP")


def write_wav(path: Path, audio: np.ndarray, rate: int = 8000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(audio.astype("<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


def installed() -> bool:
    return shutil.which("baresip") is not None


class Baresip:
    """One baresip process: ``async with Baresip(tmp, microphone) as phone: await phone.dial()``.
    ``record``: load ``sndfile`` (what the phone heard, :meth:`recording`). ``codecs``: what it
    offers, in order (``PCMU``, ``PCMA``, ``G722/16000/1``); ``rate``: the microphone WAV's rate."""

    def __init__(
        self,
        folder: Path,
        microphone: np.ndarray,
        *,
        record: bool = True,
        codecs: str = "PCMU,PCMA",
        rate: int = 8000,
    ) -> None:
        if not installed():
            raise SoftphoneError("baresip is not installed (apt-get install baresip)")
        self.folder = folder
        self.record = record
        self.codecs = codecs
        self.ctrl_port = free_port()
        self.sip_port = free_sip_port()
        self.events: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._log: asyncio.Task[None] | None = None
        self.output: list[str] = []
        write_wav(folder / "microphone.wav", microphone, rate)
        (folder / "recordings").mkdir(exist_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        (self.folder / "config").write_text(self._config())
        (self.folder / "accounts").write_text(
            f"<sip:caller@127.0.0.1:{self.sip_port}>;regint=0;audio_codecs={self.codecs}\n"
        )

    def _config(self) -> str:
        lines = [
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
            *(["module g722.so"] if "G722" in self.codecs.upper() else []),
            "module aufile.so",
        ]
        if self.record:
            lines.append("module sndfile.so")
        lines += ["module_app account.so", "module_app menu.so", "module_app ctrl_tcp.so", ""]
        return "\n".join(lines)

    async def __aenter__(self) -> Baresip:
        for attempt in range(1, START_ATTEMPTS + 1):
            first_line = len(self.output)
            try:
                await self._start()
            except SoftphoneError:
                if not self._port_taken(first_line) or attempt == START_ATTEMPTS:
                    raise
                self.ctrl_port, self.sip_port = free_port(), free_sip_port()
                self._write_config()
                continue
            self._task = asyncio.create_task(self._read_ctrl())
            return self
        raise AssertionError("unreachable")

    async def _start(self) -> None:
        """Start the process and connect to its control socket; :class:`SoftphoneError` when
        it does not come up (its log says why: a port it was given taken meanwhile, …)."""
        first_line = len(self.output)
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
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await ready.wait()
            if self._port_taken(first_line):
                raise OSError(PORT_TAKEN)
            if self._process.returncode is not None or self._log.done():
                raise OSError(f"baresip exited ({self._process.returncode})")
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.ctrl_port)
        except BaseException as exc:
            await self.__aexit__()
            if isinstance(exc, TimeoutError | OSError):
                tail = "".join(self.output[first_line:])[-1000:]
                raise SoftphoneError(f"baresip did not start: {exc!r}; log tail {tail}") from exc
            raise

    def _port_taken(self, first_line: int) -> bool:
        """The log since ``first_line`` says a port baresip was given is taken."""
        return any(PORT_TAKEN in line for line in self.output[first_line:])

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._log is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._log
        (self.folder / "baresip.log").write_text("".join(self.output))

    def kill(self) -> None:
        """End the process at once (a phone whose power went): no BYE."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def _read_log(self, ready: asyncio.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            text = line.decode(errors="replace")
            self.output.append(text)
            if "baresip is ready" in text:
                ready.set()
        ready.set()  # (it exited before it was ready: no need to wait any longer)

    async def _read_ctrl(self) -> None:
        assert self._reader is not None
        try:
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
        except (asyncio.IncompleteReadError, ConnectionError):
            async with self._changed:  # (the process is gone: wake the waiters)
                self.events.append({"event": True, "type": "CONTROL_CLOSED"})
                self._changed.notify_all()

    def post(self, command: str, params: str = "") -> None:
        """Send a command without waiting (its response lands in :attr:`responses`)."""
        if self._writer is None or self._writer.is_closing():
            raise ConnectionError("baresip's control socket is closed")
        data = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(str(len(data)).encode() + b":" + data + b",")

    async def command(self, command: str, params: str = "") -> None:
        self.post(command, params)
        assert self._writer is not None
        await self._writer.drain()

    async def dial(self, uri: str) -> None:
        await self.command("dial", uri)

    def switch_microphone(self, wav: Path) -> None:
        """The live call's microphone becomes ``wav`` (8 kHz mono PCM16), read whole now."""
        device = str(wav)
        if len(device) > MAX_DEVICE_CHARS:
            raise ValueError(f"baresip cuts a device name at {MAX_DEVICE_CHARS} chars: {device}")
        self.post("ausrc", f"aufile,{device}")

    async def wait_event(self, kind: str | tuple[str, ...], within: float) -> dict[str, Any]:
        """The first event of type ``kind`` (``CALL_ESTABLISHED``, ``CALL_CLOSED`` …; or of
        any of several types); :class:`TimeoutError` when none comes ``within`` seconds."""
        kinds = (kind,) if isinstance(kind, str) else kind

        def found() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("type") in kinds), None)

        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise TimeoutError(
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
