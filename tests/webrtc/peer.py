"""An aiortc peer that calls the server like a browser would: microphone track, data channel
``oai-events``, ``POST /v1/realtime/calls``; it records events and the agent's audio."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

RATE = 48_000
FRAME = 960


class Microphone(MediaStreamTrack):
    """Speech when some is queued, silence otherwise, 20 ms at a time in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[np.ndarray] = []
        self._pending = np.zeros(0, np.int16)
        self._start: float | None = None
        self._sent = 0
        self.last_speech_sent = 0.0

    def say(self, audio: np.ndarray) -> None:
        self._queue.append(audio)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._start + self._sent * 0.02 - loop.time()))
        if len(self._pending) == 0 and self._queue:
            self._pending = self._queue.pop(0)
        chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        if len(chunk) < FRAME:
            chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), np.int16)])
        if np.abs(chunk).max() > 500:
            self.last_speech_sent = time.perf_counter()
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += 1
        return frame


class RtcCaller:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.pc = RTCPeerConnection()
        self.mic = Microphone()
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.audio: list[tuple[float, np.ndarray]] = []
        self.location: str | None = None
        self.changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.channel = self.pc.createDataChannel("oai-events")
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.pc.addTrack(self.mic)

    def _on_message(self, message: str) -> None:
        self.events.append((time.perf_counter(), json.loads(message)))
        self.changed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                data = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(axis=1)  # type: ignore[union-attr]
                self.audio.append((time.perf_counter(), data.astype(np.int16)))
                self.changed.set()

    async def connect(self, offer_sdp: Callable[[str], str] | None = None) -> int:
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        sdp = self.pc.localDescription.sdp
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.base_url}/v1/realtime/calls",
                data=offer_sdp(sdp) if offer_sdp else sdp,
                headers={"Content-Type": "application/sdp", "Authorization": "Bearer test"},
            ) as response,
        ):
            body = await response.text()
            if response.status != 201:
                return response.status
            self.location = response.headers.get("Location")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        async with asyncio.timeout(20):
            await self.opened.wait()
        return 201

    def send(self, event: dict[str, Any] | str) -> None:
        self.channel.send(event if isinstance(event, str) else json.dumps(event))

    async def wait_for(self, predicate: Callable[[], Any], within: float, what: str) -> Any:
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.types()}") from None
        return predicate()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    def loud_audio_after(self, t: float) -> float | None:
        for at, frame in self.audio:
            if at >= t and np.abs(frame).max() > 500:
                return at
        return None

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
