"""The Realtime protocol over WebRTC, as a caller: an aiortc peer with a microphone track and the
data channel ``oai-events``, connected by ``POST /v1/realtime/calls`` (what a browser does).

It is the Realtime caller (:class:`~benchmarks.harness.clients.RealtimeCall`: the same events,
the same ``x.voice.turn.metrics`` stage breakdown, the same turn analysis) with the audio moved
onto RTP: the harness's :class:`~benchmarks.harness.clients.Microphone` hands its 20 ms chunks
(48 kHz) to :class:`MicrophoneTrack`, which aiortc pulls, encodes as Opus and sends; the agent's
voice comes back on the remote track, and every decoded frame with audible sound becomes an
``AUDIO`` event of the response whose ``output_audio_buffer.started`` came last.

What is measured is when the reply *arrived*, as the WebSocket caller measures its first audible
delta: incoming packets go to the decoder as they arrive (``transports/webrtc_jitter.py``), not
through aiortc's 80 ms playout buffer. ICE needs an address other than loopback (aioice skips
127.0.0.1): the harness runs WebRTC inside a network namespace of its own (``netns.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, Packet

from transports.sdp import audio_codec
from transports.webrtc import EVENTS_CHANNEL, OpusFrames, downmix
from transports.webrtc_jitter import ArrivalOrderBuffer, release_on_arrival

from .audio import is_loud
from .baresip_caller import BaresipCall
from .clients import CONNECT_TIMEOUT_S, WEBRTC_RATE, Call, RealtimeCall, open_call
from .sip_client import SipCaller
from .timeline import AUDIO, BARESIP, SIP, WEBRTC, Ev

FRAME = WEBRTC_RATE // 50  # 20 ms
MAX_QUEUED_FRAMES = 50
"""Chunks waiting for aiortc to take them (1 s); older ones are dropped past it, as a sound card
drops what nobody reads."""
HANGUP_TIMEOUT_S = 5.0
STOPPED_TAIL_S = 0.3
"""After ``output_audio_buffer.stopped`` the reply's last frames may still be arriving (the
server sends it when the reply has been queued, ``pipeline.lead_ms`` ahead of real time): audible
frames this long after it are still that reply's; later ones are the next reply's."""
UNCLAIMED_S = 0.2
"""Audible frames waiting for the next ``output_audio_buffer.started`` are its if they came at
most this long before it (the race is a few ms; a stray frame of an earlier reply comes long
before the next reply can start: its caller is still speaking)."""


class MicrophoneTrack(MediaStreamTrack):
    """What the harness's microphone sends, as an aiortc audio track: each chunk becomes one
    frame as soon as aiortc asks for it, RTP timestamps contiguous (the microphone paces them
    in real time). Once :meth:`encode_opus` was called (the call's codec is Opus) it hands aiortc
    the frame already encoded, as a browser's Opus encoder codes it (the voice mode, 20 ms, at
    aiortc's bit rate), on the event loop: aiortc would encode it in a worker thread, two thread
    hops per packet that the caller's CPU pays on the server's two cores."""

    kind = "audio"
    BIT_RATE = 96_000
    """aiortc's Opus bit rate (its encoder codes stereo; this one mono, what a microphone is)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: deque[np.ndarray] = deque(maxlen=MAX_QUEUED_FRAMES)
        self._ready = asyncio.Event()
        self._opus: OpusFrames | None = None
        self.sent = 0
        self.taken: np.ndarray | None = None
        """The chunk aiortc took last."""

    def encode_opus(self) -> None:
        """Send Opus packets coded here from now on (before the first frame)."""
        if self.sent:
            raise RuntimeError("the microphone's coding changes only before it is used")
        self._opus = OpusFrames(FRAME, application="voip", bit_rate=self.BIT_RATE)

    def put(self, chunk: np.ndarray) -> None:
        if len(chunk) != FRAME:
            raise ValueError(f"a chunk must be {FRAME} samples (20 ms at 48 kHz), not {len(chunk)}")
        self._chunks.append(chunk)
        self._ready.set()

    async def recv(self) -> AudioFrame | Packet:
        """The next chunk (waits for one). Cancel-safe."""
        while not self._chunks:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        chunk = self.taken = self._chunks.popleft()
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = WEBRTC_RATE
        frame.pts = self.sent * FRAME
        frame.time_base = fractions.Fraction(1, WEBRTC_RATE)
        self.sent += 1
        return frame if self._opus is None else self._opus.encode(frame)

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class WebRtcCall(RealtimeCall):
    """A Realtime caller over WebRTC; ``url`` is ``http://HOST:PORT/v1/realtime/calls``."""

    rate = WEBRTC_RATE
    receive_on_arrival = True
    """Decode the agent's packets as they arrive; False: through aiortc's playout buffer (80 ms,
    what a caller measured before ``webrtc_jitter.py``; ``benchmarks/webrtc_stages.py``)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.track = MicrophoneTrack()
        self.received: ArrivalOrderBuffer | None = None
        self.location: str | None = None
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._playing: str | None = None
        self._stopped_at: float | None = None
        self._unclaimed: list[float] = []
        """Audible frames that came while no reply was playing (see :meth:`_heard`)."""
        self._media: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------ wire

    async def _connect(self) -> None:
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = self._channel = pc.createDataChannel(EVENTS_CHANNEL)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._inbox.put_nowait)
        channel.on("close", lambda: self._inbox.put_nowait(None))
        pc.on("track", self._on_track)
        pc.addTrack(self.track)
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio" and self.receive_on_arrival:
                self.received = release_on_arrival(transceiver.receiver)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self._post_offer(pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            if audio_codec(answer) == "opus":
                self.track.encode_opus()
            await asyncio.wait_for(opened.wait(), CONNECT_TIMEOUT_S)
        except BaseException:
            await self._disconnect()  # nothing of the peer connection stays behind
            raise

    async def _post_offer(self, sdp: str) -> str:
        headers = {**self._headers(), "Content-Type": "application/sdp"}
        timeout = aiohttp.ClientTimeout(total=CONNECT_TIMEOUT_S)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(self.url, data=sdp, headers=headers) as response,
            ):
                body = await response.text()
                if response.status != 201:
                    raise ConnectionError(f"HTTP {response.status}: {body[:300]}")
                self.location = response.headers.get("Location")
                return body
        except aiohttp.ClientError as exc:
            raise ConnectionError(f"POST {self.url}: {exc}") from exc

    async def _send(self, message: dict[str, Any]) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            raise ConnectionError("the data channel is not open")
        channel.send(json.dumps(message, separators=(",", ":")))

    async def _receive(self) -> str:
        message = await self._inbox.get()
        if message is None:
            raise ConnectionError("the data channel closed")
        return message

    async def _send_audio(self, chunk: np.ndarray) -> None:
        self.track.put(chunk)

    async def _hang_up(self) -> None:
        if self.location is None:
            return
        parts = urlsplit(self.url)
        url = urlunsplit((parts.scheme, parts.netloc, f"{self.location}/hangup", "", ""))
        timeout = aiohttp.ClientTimeout(total=HANGUP_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.post(url) as response:
            await response.read()

    async def _disconnect(self) -> None:
        self.track.stop()
        if self._pc is not None:
            await self._pc.close()
        for task in self._media:
            task.cancel()
        for task in self._media:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task

    def vanish(self) -> None:
        """The network dies: the microphone stops and the peer connection goes, without a
        hang-up."""
        if self._tasks:
            self._tasks[1].cancel()
        if self._pc is not None:
            self._media.append(asyncio.get_running_loop().create_task(self._pc.close()))

    # ------------------------------------------------------------ what arrives

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._media.append(asyncio.get_running_loop().create_task(self._listen(track)))

    async def _listen(self, track: MediaStreamTrack) -> None:
        """The agent's voice: an event for every audible frame, stamped when it was decoded."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.perf_counter()
                if isinstance(frame, AudioFrame) and is_loud(downmix(frame)):
                    self._heard(now)

    def _heard(self, now: float) -> None:
        """An audible frame, of the reply playing — or, when none is (its audio was cleared, or
        it stopped a while ago), of the next one: RTP carries no response id, and the next
        reply's first packets may overtake its ``output_audio_buffer.started`` on the data
        channel; they wait for it, stamped when they arrived."""
        if self._stopped_at is not None and now - self._stopped_at > STOPPED_TAIL_S:
            self._playing = self._stopped_at = None
        if self._playing is None:
            self._unclaimed.append(now)
        else:
            self.add(Ev(now, AUDIO, self._playing, True))

    def handle(self, message: dict[str, Any], now: float) -> None:
        kind, response = message.get("type"), message.get("response_id")
        if kind == "output_audio_buffer.started":
            self._playing, self._stopped_at = response, None
            for at in self._unclaimed:
                if now - at <= UNCLAIMED_S:
                    self.add(Ev(at, AUDIO, response, True))
            self._unclaimed.clear()
        elif kind == "output_audio_buffer.cleared" and response == self._playing:
            self._playing = self._stopped_at = None  # nothing more of it will come
        elif kind == "output_audio_buffer.stopped" and response == self._playing:
            self._stopped_at = now  # its last frames (the server's lead) are still on the way
        super().handle(message, now)


def open_any_call(protocol: str, url: str) -> Call:
    """A caller for any protocol: WebRTC's here, SIP's (``sip_client.py``), baresip
    (``baresip_caller.py``), the others
    :func:`~.clients.open_call`'s."""
    if protocol == SIP:
        return SipCaller(url)
    if protocol == BARESIP:
        return BaresipCall(url)
    return WebRtcCall(url) if protocol == WEBRTC else open_call(protocol, url)
