"""The Realtime protocol over WebRTC (aiortc), compatible with OpenAI's WebRTC flow.

``POST /v1/realtime/calls`` with an SDP offer (``Content-Type: application/sdp``, or the SDK's
multipart form: ``realtime_request.py``) answers with the SDP answer and a ``Location`` naming
the call. Audio travels as Opus both ways; events travel on the client's data channel
``oai-events`` and are the WebSocket endpoint's, handled by the same
:class:`~transports.realtime.connection.RealtimeConnection` — except audio, which rides the track:
``response.output_audio.delta`` is never sent, ``output_audio_buffer.started`` / ``stopped`` /
``cleared`` are, and ``output_audio_buffer.clear`` is served here. Incoming Opus is decoded by
aiortc to 48 kHz stereo as each packet arrives (not after aiortc's 80 ms playout buffer:
``webrtc_jitter.py``), down-mixed here; outgoing speech is queued as frames (10 ms by default:
``WebRtcOptions.frame_ms``) that :class:`ReplyTrack` releases in real time, and flushed at once on
barge-in or that clear; while the agent is silent the track sends nothing (Opus DTX,
``WebRtcOptions.dtx``) and its next speech leaves at once. What the track releases is what the
caller hears: it reports that position to the session (``Session.heard``). The session's
lifecycle is :class:`~transports.runner.SessionRunner`'s.

When the call's codec is Opus the track encodes the frames itself (:class:`OpusFrames`) and hands
aiortc the packets: aiortc's own encoder would cut 20 ms frames whatever the track gives it, and
runs in a worker thread. A 10 ms frame leaves in the next 10 ms slot and the caller's jitter
buffer needs only one 10 ms packet, so the caller hears the reply earlier; the answer asks the
caller's browser for 10 ms frames too (``a=ptime``), so the end of its speech reaches the server
sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidAccessError, OperationError
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, CodecContext, Packet

from pipeline import messages as m
from pipeline.clock import Clock
from pipeline.context import new_id
from pipeline.echo import EchoCanceller
from pipeline.errors import ProtocolError
from pipeline.tasks import cancel_and_wait

from .realtime.connection import RealtimeConnection, event_id
from .runner import SessionRunner
from .sdp import audio_codec, check_offer, with_ptime
from .webrtc_jitter import ArrivalOrderBuffer, release_on_arrival

log = logging.getLogger("voice.transport.webrtc")
_OFFER_ERRORS = (
    ValueError, KeyError, IndexError, TypeError, AttributeError, AssertionError,
    InvalidAccessError, OperationError,
)  # fmt: skip
"""What aiortc raises on an offer it cannot use (found by fuzzing: a missing ``a=setup``, a bare
``a=rtcp`` or ``c=`` line end in AttributeError or AssertionError; codecs it cannot send with in
OperationError)."""
RATE = 48_000
FRAME = 960  # 20 ms at 48 kHz: aiortc's Opus frame, and the track's unless it encodes itself
FRAME_MS = (10, 20)
"""The frame lengths the track can send (Opus allows 2.5-60 ms; below 10 the packet overhead
outgrows the gain, above 20 every hop waits longer)."""
TIME_BASE = fractions.Fraction(1, RATE)
DTX_HANGOVER_MS = 60
"""Silence the track still sends after the last speech before it goes quiet (discontinuous
transmission): the caller's decoder ends on silence, and pauses between clauses shorter than
this are sent as they are."""
DTX_REFRESH_MS = 400
"""While quiet, a DTX packet this often (libwebrtc's Opus DTX sends one every 400 ms)."""
WAKE_MS = 4000
"""How long :meth:`ReplyTrack.wake` keeps the stream going with no speech to send, once the
caller has stopped speaking or a reply has started."""
WAKE_SPEAKING_MS = 30_000
"""The same while the caller speaks (their turn's end sets it to :data:`WAKE_MS`). Measured in
Chromium (the page's downlink: the server's first reply packet → the page's first sound, median
of 12 turns in two runs each): 149 ms when the reply started a talk spurt after comfort noise,
140 with the stream woken when the caller stopped speaking (~350 ms before the reply), 110 woken
when they began to speak, 104 with no DTX at all."""
EVENTS_CHANNEL = "oai-events"
EARLY_EVENTS = 512
"""Events kept for a data channel that has not opened yet (a turn makes a few dozen: the reply's
audio goes on the track, not the channel)."""


@dataclass(slots=True)
class WebRtcOptions:
    ice_servers: list[RTCIceServer] = field(default_factory=list)
    """STUN/TURN servers; empty by default (aiortc would otherwise reach a public STUN server)."""
    connect_timeout: float = 10.0
    """Seconds for ICE and DTLS to connect before the call is dropped."""
    max_queued_ms: int = 1000
    """Reply audio waiting for the track; older frames are dropped past it."""
    echo_cancellation: bool = False
    """Take the agent's voice out of the caller's audio on the server (``pipeline/echo.py``, the
    reply audio pushed to the track as the reference) before the VAD hears it."""
    frame_ms: int = 10
    """Opus frame length both ways: the agent's voice is sent in frames this long, and the
    answer asks the caller for the same (``a=ptime``). 20 is aiortc's (and browsers') default."""
    dtx: bool = True
    """Send no Opus packets while the agent is silent (:class:`ReplyTrack`)."""
    dtx_wake: bool = True
    """With ``dtx``: silence from the caller's speech until the reply (:meth:`ReplyTrack.wake`)."""


@dataclass(slots=True)
class _Queued:
    samples: np.ndarray  # one frame
    item_id: str | None
    item_ms: int
    """Of that item's audio, what comes before this frame."""


class OpusFrames:
    """The track's own Opus encoder: one packet per frame, as the frame comes, on the caller's
    thread (mono; by default CELT's low-delay mode: 2.5 ms of look-ahead against the voice
    mode's 6.5)."""

    BIT_RATE = 64_000

    def __init__(self, frame: int, application: str = "lowdelay", bit_rate: int = BIT_RATE) -> None:
        self.codec = CodecContext.create("libopus", "w")
        self.codec.bit_rate = bit_rate
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = RATE
        self.codec.time_base = TIME_BASE
        self.codec.options = {
            "application": application,
            "frame_duration": str(frame * 1000 // RATE),
        }
        self.codec.open()
        self._toc: int | None = None

    def encode(self, frame: AudioFrame) -> Packet:
        packets = self.codec.encode(frame)
        if len(packets) != 1:  # libopus codes each whole frame at once; anything else is a bug
            raise RuntimeError(f"the Opus encoder gave {len(packets)} packets for one frame")
        packet = packets[0]
        packet.pts, packet.time_base = frame.pts, TIME_BASE  # the track's RTP time, not libopus's
        self._toc = bytes(packet)[0] & 0xFC
        return packet

    def dtx(self, pts: int) -> Packet:
        """A DTX packet (RFC 6716: the encoder's TOC byte, one frame of zero bytes — what
        libopus sends in DTX, and what a WebRTC receiver reads as "discontinuous transmission",
        a payload of at most 2 bytes, playing comfort noise until the next speech instead of
        concealing a loss). After at least one :meth:`encode`."""
        if self._toc is None:
            raise RuntimeError("a DTX packet takes the TOC byte of an encoded one: none yet")
        packet = Packet(bytes([self._toc]))
        packet.pts, packet.time_base = pts, TIME_BASE
        return packet


class ReplyTrack(MediaStreamTrack):
    """The agent's voice: queued frames at 48 kHz (``frame_ms`` long), released one per
    ``frame_ms`` (silence when there is nothing to say); Opus packets instead of frames once
    :meth:`encode_opus` was called (aiortc sends a packet as it is). At most ``max_frames`` 20 ms
    of audio wait, whatever the framing. ``flush`` drops everything queued at once; while
    ``held()`` (the session holds the agent's voice: the caller may be cutting in) it releases
    silence and keeps the queue, so the audio queued ahead of real time stops too.

    With discontinuous transmission (``encode_opus(..., dtx=True)``), once nothing is queued and
    :data:`DTX_HANGOVER_MS` of silence has gone out, the track sends a DTX packet and then one
    every :data:`DTX_REFRESH_MS` until speech is queued again (RFC 7587's DTX, as libwebrtc's
    Opus encoder does it). That speech leaves at once, its RTP time jumping over the pause to the
    clock's time, so a receiver that plays by timestamp plays it at once; the silence sent before
    the pause lets the caller's decoder fade into silence rather than conceal a cut-off word, and
    the DTX packets tell a browser's jitter buffer that the pause is not packet loss (without
    them Chromium's NetEq took the pause for loss and its delay grew: 224 ms mean in one run).
    An idle call then costs neither peer the packet rate of a continuous stream (on the two test
    cores: the server 16 → 8 % of a core for one idle call, the harness's aiortc caller 15 → 5 %:
    ``benchmarks/call_cpu.py``). While the caller speaks, and until the reply it asks for
    starts, the call keeps the stream going (:meth:`wake`): the pause is for when nobody speaks.

    The track knows what the caller hears: when it releases a frame of an assistant item (aiortc
    pulls it to send it), everything of that item before the frame has been played out, and it
    says so to ``on_heard(item_id, ms)`` — the session's :meth:`~pipeline.session.Session.heard`.
    Flushed frames are never released, so never reported."""

    kind = "audio"

    def __init__(
        self,
        clock: Clock,
        max_frames: int,
        on_heard: Callable[[str, int], None] | None = None,
        held: Callable[[], bool] = lambda: False,
        frame_ms: int = 20,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._held = held
        self._max_ms = max_frames * 20
        self._frames: deque[_Queued] = deque()
        self._on_heard = on_heard
        self._start: float | None = None
        self._sent = 0
        self._pts = 0
        """The next frame's RTP time: samples since the first frame."""
        self._quiet = 0
        """Frames of silence released since the last frame of speech."""
        self._dtx_after: int | None = None
        """Quiet frames after which nothing is sent until there is speech; None: never."""
        self._paused_at: float | None = None
        """When the last DTX packet went out (the track is quiet); None while it sends."""
        self._awake_until: float | None = None
        """Until then the track sends silence, not DTX (:meth:`wake`)."""
        self._ready = asyncio.Event()
        self._frame_ms(frame_ms)
        self._opus: OpusFrames | None = None
        self._item: str | None = None  # the item being queued, and its samples so far
        self._item_samples = 0
        self.released = 0

    def push(self, samples: np.ndarray, item_id: str | None = None) -> None:
        """Queue 48 kHz audio, of the assistant item ``item_id`` when it has one."""
        if item_id != self._item:
            self._item, self._item_samples = item_id, 0
        size = self.frame
        for start in range(0, len(samples), size):
            frame = samples[start : start + size]
            item_ms = self._item_samples * 1000 // RATE
            self._item_samples += len(frame)
            if len(frame) < size:
                frame = np.concatenate([frame, np.zeros(size - len(frame), np.int16)])
            self._frames.append(_Queued(frame, item_id, item_ms))
        self._ready.set()

    def flush(self) -> int:
        dropped = len(self._frames)
        self._frames.clear()
        return dropped

    @property
    def queued(self) -> int:
        return len(self._frames)

    def _frame_ms(self, frame_ms: int) -> None:
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms {frame_ms}: use {' or '.join(map(str, FRAME_MS))}")
        self.frame = RATE * frame_ms // 1000
        self._frames = deque(self._frames, maxlen=max(1, self._max_ms // frame_ms))
        self._silence = np.zeros(self.frame, dtype=np.int16)

    def encode_opus(self, frame_ms: int, dtx: bool = False) -> None:
        """Hand aiortc Opus packets of ``frame_ms`` from now on (the call's codec is Opus), not
        frames for its encoder (which cuts 20 ms ones, in a worker thread); with ``dtx``, none
        while the agent is silent. Before the first :meth:`push`."""
        if self._frames or self._sent:
            raise RuntimeError("the track's framing changes only before it is used")
        self._frame_ms(frame_ms)
        self._opus = OpusFrames(self.frame)
        self._dtx_after = -(-DTX_HANGOVER_MS // frame_ms) if dtx else None

    def wake(self, ms: int = WAKE_MS) -> None:
        """The agent may speak soon (the caller is speaking, or has stopped, or a reply has
        started): send silence, not DTX, until it does or for ``ms`` from now (a later call
        sets it again), so that the caller's jitter buffer is playing a steady stream when the
        reply starts rather than starting a talk spurt after comfort noise. Without DTX it
        changes nothing."""
        if self._dtx_after is None:
            return
        self._awake_until = self._clock.now() + ms / 1000
        self._ready.set()

    def _awake(self) -> bool:
        return self._awake_until is not None and self._clock.now() < self._awake_until

    def stop(self) -> None:
        super().stop()
        self._ready.set()

    async def recv(self) -> AudioFrame | Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = self._clock.now()
        else:
            await self._clock.sleep_until(self._start + self._pts / RATE)
        quiet = self._dtx_after is not None and self._quiet >= self._dtx_after
        if quiet and not self._frames and not self._awake():
            if self._paused_at is not None:
                await self._until_speech(self._paused_at + DTX_REFRESH_MS / 1000)
            if not self._frames and not self._awake():  # the pause begins, or goes on: DTX
                return self._dtx_packet()
            self._paused_at = None
        if self._frames and not self._held():
            samples, self._quiet = self._release(), 0
        else:
            samples, self._quiet = self._silence, self._quiet + 1
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        self._pts += self.frame
        self._sent += 1
        return frame if self._opus is None else self._opus.encode(frame)

    async def _until_speech(self, deadline: float) -> None:
        """Discontinuous transmission: wait for queued audio, :meth:`wake` or ``deadline`` on
        the clock, then move the RTP time to the clock's — over the pause, never back.
        Cancel-safe; raises MediaStreamError once the track stopped."""
        while not self._frames and not self._awake() and self._clock.now() < deadline:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            waits = {
                asyncio.ensure_future(self._ready.wait()),
                asyncio.ensure_future(self._clock.sleep_until(deadline)),
            }
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self.readyState != "live":
            raise MediaStreamError
        assert self._start is not None
        self._pts = max(self._pts, int((self._clock.now() - self._start) * RATE))

    def _dtx_packet(self) -> Packet:
        assert self._opus is not None
        self._paused_at = self._clock.now()
        packet = self._opus.dtx(self._pts)
        self._pts += self.frame
        self._sent += 1
        return packet

    def _release(self) -> np.ndarray:
        queued = self._frames.popleft()
        self.released += 1
        self._awake_until = None
        if queued.item_id is not None and self._on_heard is not None:
            self._on_heard(queued.item_id, queued.item_ms)
        return queued.samples


def downmix(frame: AudioFrame) -> np.ndarray:
    """An aiortc audio frame (s16, packed or planar, any channel count) → int16 mono."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if data.dtype != np.int16:
        data = (np.clip(data.astype(np.float32), -1.0, 1.0) * 32767).astype(np.int16)
    if channels == 1:
        return data.reshape(-1)
    if data.shape[0] == channels:  # planar
        return data.mean(axis=0).astype(np.int16)
    return data.reshape(-1, channels).mean(axis=1).astype(np.int16)


class WebRtcCall:
    """One call: a peer connection, its session and the tasks that join them.

    ``on_connect`` is called once, when ICE and DTLS are up; a reason it returns ends the call
    (the server had no session free for it). ``on_end`` is called once the call has ended."""

    def __init__(
        self,
        conn: RealtimeConnection,
        options: WebRtcOptions,
        on_end: Callable[[WebRtcCall], None],
        on_connect: Callable[[WebRtcCall], str | None] | None = None,
    ) -> None:
        self.id = new_id("rtc")
        self.conn = conn
        self.session = conn.session
        self.options = options
        self._on_end = on_end
        self._on_connect = on_connect
        self.connected = False
        """The peer connection has been up (it stays True once it was)."""
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=options.ice_servers))
        self.track = ReplyTrack(
            self.session.clock,
            max(1, options.max_queued_ms // 20),
            self.session.heard,
            self.session.reply_held,
        )
        self.runner = SessionRunner(
            self.session, self._deliver, log=log, peer="peer", describe=self._describe
        )
        self.channel: RTCDataChannel | None = None
        self._early: list[dict[str, Any]] = []
        """Events of the session before the caller's data channel opened (its audio can come
        first: SRTP flows once DTLS is up, the channel's SCTP association after): sent when it
        opens, after ``session.created``; at most :data:`EARLY_EVENTS`."""
        self._early_dropped = 0
        self.echo = (
            EchoCanceller(RATE, session_id=self.session.id) if options.echo_cancellation else None
        )
        self.received: ArrivalOrderBuffer | None = None
        """The caller's audio packets as they arrive (no playout delay: ``webrtc_jitter.py``)."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._playing: str | None = None
        self._last_played: str | None = None
        self._cleared: set[str] = set()
        """Responses whose audio the client cleared: what is left of it is dropped."""
        self.closing = False
        conn.clear_output = self._clear_output

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer SDP (ICE gathered). Raises ProtocolError."""
        summary = check_offer(offer_sdp)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "audio":
                    transceiver.sender.replaceTrack(self.track)
                    self.received = release_on_arrival(transceiver.receiver)
                    transceiver.direction = "sendrecv"
                    break
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except _OFFER_ERRORS as exc:
            raise ProtocolError(
                f"cannot use this SDP offer: {type(exc).__name__}: {exc}", code="invalid_sdp"
            ) from None
        sdp = self.pc.localDescription.sdp
        codec = audio_codec(sdp)
        if codec == "opus":
            self.track.encode_opus(self.options.frame_ms, self.options.dtx)
            if self.options.frame_ms != FRAME * 1000 // RATE:
                sdp = with_ptime(sdp, self.options.frame_ms)
        log.info(
            "call %s (session %s): answered an offer with %s, sending %s",
            self.id,
            self.session.id,
            summary.media,
            codec,
        )
        self.runner.start()
        self._spawn(self._end_with_session(), "ended")
        self._spawn(self._watchdog(), "watchdog")
        return sdp

    # ------------------------------------------------------------ peer connection events

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._listen(track), "listen")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_CHANNEL:
            log.info("call %s: ignoring data channel %r", self.id, channel.label)
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._spawn(self.close("data channel closed"), "close"))
        self._send(self.conn.hello())
        early, self._early = self._early, []
        if self._early_dropped:
            log.warning(
                "call %s: %d events before the data channel opened were dropped (at most %d kept)",
                self.id, self._early_dropped, EARLY_EVENTS,
            )  # fmt: skip
        self._send(early)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._send(
                [
                    _error(
                        "binary messages are not supported: send JSON text events", "invalid_frame"
                    )
                ]
            )
            return
        self._send(self.conn.receive(message))

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("call %s: connection %s", self.id, state)
        if state == "connected" and not self.connected and not self.closing:
            self.connected = True
            refusal = self._on_connect(self) if self._on_connect is not None else None
            if refusal is not None:
                await self.close(refusal)
        elif state in ("failed", "closed"):
            await self.close(f"connection {state}")

    # ------------------------------------------------------------ tasks

    async def _listen(self, track: MediaStreamTrack) -> None:
        """Caller audio: decoded Opus → mono → the session. Ends with the track."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, AudioFrame):
                continue
            audio = downmix(frame)
            if self.echo is not None and frame.sample_rate == RATE:
                audio = self.echo.near_end(audio, self.session.clock.now())
            try:
                self.session.append_audio(audio, frame.sample_rate)
            except ProtocolError as exc:
                self._send([_error(str(exc), exc.code)])

    async def _deliver(self, event: m.SessionEvent) -> None:
        self._send(self._render(event))

    async def _end_with_session(self) -> None:
        """Hang up once the session's output ends (it closed, or a send failed)."""
        await self.close(await self.runner.wait())

    async def _watchdog(self) -> None:
        """Drop the call if it has not connected within ``connect_timeout``."""
        await asyncio.sleep(self.options.connect_timeout)
        if self.pc.connectionState != "connected":
            await self.close(f"not connected within {self.options.connect_timeout:g} s")

    def _clear_output(self) -> list[dict[str, Any]]:
        """``output_audio_buffer.clear``: silence the track at once, cancel the reply if one is
        active (its ``response.done`` follows), answer ``output_audio_buffer.cleared``."""
        dropped = self.track.flush()
        response_id = self._playing or self._last_played
        if self._playing is not None:
            self._cleared.add(self._playing)
            self._playing = None
        with contextlib.suppress(ProtocolError):  # no reply active: the flush was all to do
            self.session.cancel_response()
        log.debug("call %s: client cleared the output, %d frames dropped", self.id, dropped)
        if response_id is None:
            return []  # nothing was ever played: nothing to clear
        return [_buffer_event("output_audio_buffer.cleared", response_id)]

    def _render(self, event: m.SessionEvent) -> list[dict[str, Any]]:
        if self.options.dtx_wake:
            self._wake_for(event)
        if isinstance(event, m.ReplyAudio):
            if event.response_id in self._cleared:
                return []
            self.track.push(event.audio, event.item_id)
            if self.echo is not None:
                self.echo.far_end(event.audio, self.session.clock.now())
            if self._playing != event.response_id:
                self._playing = self._last_played = event.response_id
                return [_buffer_event("output_audio_buffer.started", event.response_id)]
            return []
        out = self.conn.render(event)
        if isinstance(event, m.ReplyDone):
            self._cleared.discard(event.response_id)
        if isinstance(event, m.ReplyDone) and self._playing == event.response_id:
            self._playing = None
            if event.status in ("completed", "incomplete"):  # (incomplete: the token limit)
                out.append(_buffer_event("output_audio_buffer.stopped", event.response_id))
            else:
                dropped = self.track.flush()
                log.debug("call %s: flushed %d frames", self.id, dropped)
                out.append(_buffer_event("output_audio_buffer.cleared", event.response_id))
        return out

    def _wake_for(self, event: m.SessionEvent) -> None:
        """A reply may follow: the track streams until it does (no talk spurt after DTX)."""
        if isinstance(event, m.SpeechStarted):
            self.track.wake(WAKE_SPEAKING_MS)
        elif isinstance(event, m.SpeechStopped | m.ReplyStarted):
            self.track.wake()

    def _send(self, events: list[dict[str, Any]]) -> None:
        channel = self.channel
        if channel is None:  # not open yet: kept for it
            kept = events[: max(0, EARLY_EVENTS - len(self._early))]
            self._early.extend(kept)
            self._early_dropped += len(events) - len(kept)
            return
        if channel.readyState != "open":
            return
        for event in events:
            channel.send(json.dumps(event, separators=(",", ":")))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ teardown

    async def close(self, reason: str) -> None:
        """Hang up: stop the session, its tasks, the track and the peer connection. Idempotent."""
        if self.closing:
            await self._closed.wait()
            return
        self.closing = True
        await self.runner.stop(reason)
        await cancel_and_wait(list(self._tasks))
        self.track.stop()
        try:
            await self.pc.close()
        except Exception:  # aiortc, on a connection a malformed offer left half set up
            log.warning("call %s: the peer connection failed to close", self.id, exc_info=True)
        self._on_end(self)
        self._closed.set()

    def _describe(self) -> str:
        heard = self.received
        link = "" if heard is None else f", {heard.lost} caller packets lost, {heard.dropped} late"
        return f"call {self.id}, {self.track.released} frames of speech released{link}"


def _buffer_event(kind: str, response_id: str) -> dict[str, Any]:
    return {"type": kind, "event_id": event_id(), "response_id": response_id}


def _error(message: str, code: str) -> dict[str, Any]:
    from .realtime.connection import error_event

    return error_event(message, code, "invalid_request_error", None, None)
