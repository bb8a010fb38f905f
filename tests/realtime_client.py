"""A caller for end-to-end tests: the official ``openai`` SDK as the Realtime client, a
microphone task that streams in real time (speech when there is some, silence otherwise), and
every received event validated strictly and kept with its arrival time."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from .realtime_schema import validate_server_event

RATE = 24_000
CHUNK = 480  # 20 ms at 24 kHz


class Caller:
    def __init__(
        self, port: int, *, rate: int = RATE, encode: Callable[[np.ndarray], bytes] | None = None
    ) -> None:
        self.client = AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test")
        self.rate = rate
        self.chunk = rate // 50
        self.encode = encode or (lambda a: a.astype("<i2").tobytes())
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Condition()
        self._speech: list[np.ndarray] = []
        self.last_speech_sent = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._manager: Any = None
        self.conn: Any = None

    async def __aenter__(self) -> Caller:
        self._manager = self.client.realtime.connect(
            model="voice-local", max_retries=0, extra_query={"x_voice_events": "1"}
        )
        self.conn = await self._manager.__aenter__()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._microphone())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._manager.__aexit__(None, None, None)
        await self.client.close()

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(event)

    def say(self, audio: np.ndarray) -> None:
        """Queue speech for the microphone (``audio`` at the caller's rate)."""
        self._speech.append(audio)

    async def _microphone(self) -> None:
        start = time.perf_counter()
        sent = 0
        pending = np.zeros(0, dtype=np.int16)
        while True:
            if len(pending) == 0 and self._speech:
                pending = self._speech.pop(0)
            chunk, pending = pending[: self.chunk], pending[self.chunk :]
            if len(chunk) < self.chunk:
                chunk = np.concatenate([chunk, np.zeros(self.chunk - len(chunk), np.int16)])
            audio = base64.b64encode(self.encode(chunk)).decode()
            await self.conn.send({"type": "input_audio_buffer.append", "audio": audio})
            if np.abs(chunk).max() > 500:
                self.last_speech_sent = time.perf_counter()
            sent += 1
            # pace like a real microphone: chunk n leaves at start + n * 20 ms
            await asyncio.sleep(max(0.0, start + sent * 0.02 - time.perf_counter()))

    async def _read(self) -> None:
        while True:
            raw = await self.conn.recv_bytes()
            event = json.loads(raw)
            validate_server_event(event)
            async with self._changed:
                self.events.append((time.perf_counter(), event))
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], within: float, what: str) -> Any:
        """Wait (event-driven) until ``predicate()`` is truthy; return its value."""
        try:
            async with asyncio.timeout(within), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within} s waiting for {what}; got {self.types()}"
            ) from None
        return predicate()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.events if e["type"] != "response.output_audio.delta"]

    def response_done(self, n: int = 1) -> list[dict[str, Any]] | None:
        done = self.of("response.done")
        return done if len(done) >= n else None

    def audio_of(
        self, response_id: str, decode: Callable[[bytes], np.ndarray] | None = None
    ) -> np.ndarray:
        decode = decode or (lambda b: np.frombuffer(b, dtype="<i2"))
        parts = [
            decode(base64.b64decode(e["delta"]))
            for e in self.of("response.output_audio.delta")
            if e["response_id"] == response_id
        ]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
