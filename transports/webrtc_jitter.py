"""Incoming WebRTC audio without aiortc's playout delay.

aiortc's receiver puts every RTP packet through a :class:`~aiortc.jitterbuffer.JitterBuffer`
before decoding it; for audio that buffer holds four packets back (``prefetch=4``) and releases a
packet only once the next one has arrived, so every 20 ms Opus frame reaches the track 80 ms
after it reached the socket — and a lost packet stalls the stream until 16 more have piled up.
That delay smooths a loudspeaker's playout; a listener that only feeds a VAD and an ASR (the
server), or a caller that measures when the reply arrived (the benchmark), gains nothing from it.

:class:`ArrivalOrderBuffer` releases each packet as it arrives. Every Opus packet is one whole
frame, so there is nothing to reassemble; a packet older than one already released (late, or
a duplicate) is dropped, and a gap (a lost packet) is counted and stepped over — the decoder
carries on with the next frame, as after any loss. :func:`release_on_arrival` puts one in an
aiortc receiver (aiortc has no option for it; the receiver keeps it in a private attribute,
checked here so that an aiortc that changed fails loudly rather than silently keeping 80 ms).

It also decodes each packet where it arrives, on the event loop, into the receiver's track
(:class:`DecodeOnArrival`): aiortc hands every packet to a decoder thread, which hands the frame
back with ``run_coroutine_threadsafe`` — two thread hops, a task and a wake-up of the loop per
packet, about 0.2 ms of CPU against the 0.05 ms that decoding an Opus packet takes, and a wait
for the GIL on a busy server. Opus is decoded to mono (what the server and the benchmark's caller
use; aiortc decodes to stereo), other codecs by aiortc's decoders.
"""

from __future__ import annotations

import logging
from typing import Any

import av
from aiortc import RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from av import CodecContext, Packet

log = logging.getLogger("voice.transport.webrtc")
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
_CODECS = "_RTCRtpReceiver__codecs"
_HALF = 1 << 15
OPUS_RATE = 48_000


class _MonoOpus:
    """An Opus decoder giving mono 16-bit frames at 48 kHz (libopus mixes the channels down)."""

    def __init__(self) -> None:
        self.codec = CodecContext.create("libopus", "r")
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = OPUS_RATE

    def decode(self, frame: JitterFrame) -> list[Any]:
        packet = Packet(frame.data)
        packet.pts = frame.timestamp
        return list(self.codec.decode(packet))


class DecodeOnArrival:
    """Decodes the packets :class:`ArrivalOrderBuffer` releases, on the event loop, and puts the
    frames in the receiver's track (what ``track.recv()`` returns), their ``pts`` the RTP time
    since the first packet (as aiortc's receiver stamps them). A packet that does not decode is
    counted and skipped; the decoder keeps its state, as aiortc's thread does."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._receiver = receiver
        self._decoders: dict[int, Any] = {}
        self._origin: int | None = None
        self.errors = 0

    def __call__(self, packet: RtpPacket, data: bytes) -> None:
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            codec = getattr(self._receiver, _CODECS)[packet.payload_type]
            decoder = _MonoOpus() if codec.name.lower() == "opus" else get_decoder(codec)
            self._decoders[packet.payload_type] = decoder
        if self._origin is None:
            self._origin = packet.timestamp
        pts = (packet.timestamp - self._origin) & 0xFFFFFFFF
        try:
            frames = decoder.decode(JitterFrame(data=data, timestamp=pts))
        except av.FFmpegError as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("a caller's packet did not decode (%d so far): %s", self.errors, exc)
            return
        track = self._receiver._track
        if track is not None:
            for frame in frames:
                track._queue.put_nowait(frame)


class ArrivalOrderBuffer:
    """Sans-I/O: ``add(packet)`` → ``(False, frame or None)``, aiortc's ``JitterBuffer.add``
    contract (the flag asks for a video key frame: never, for audio)."""

    def __init__(self, decode: DecodeOnArrival | None = None) -> None:
        self.decode = decode
        """Decodes each released packet itself (then ``add`` hands aiortc nothing to decode)."""
        self._next: int | None = None
        """The sequence number expected next (16 bits, wrapping)."""
        self.released = 0
        self.lost = 0
        """Packets never seen (skipped gaps), as far as this buffer can tell."""
        self.dropped = 0
        """Packets that came after a later one (late or duplicated): not released."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is not None:
            ahead = (seq - self._next) & 0xFFFF
            if ahead >= _HALF:  # behind what was released already
                self.dropped += 1
                return False, None
            self.lost += ahead
        self._next = (seq + 1) & 0xFFFF
        self.released += 1
        data: bytes = getattr(packet, "_data", packet.payload)  # aiortc's depayloaded bytes
        if self.decode is not None:
            self.decode(packet, data)
            return False, None
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def release_on_arrival(receiver: RTCRtpReceiver, decode: bool = True) -> ArrivalOrderBuffer:
    """Give an audio receiver an :class:`ArrivalOrderBuffer` (before any packet has arrived),
    decoding on arrival (:class:`DecodeOnArrival`) unless ``decode`` is False; returns it (its
    counters say what the link lost). Raises RuntimeError when this aiortc keeps its jitter
    buffer, codecs or track elsewhere."""
    if (
        not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer)
        or not isinstance(getattr(receiver, _CODECS, None), dict)
        or not hasattr(receiver, "_track")
    ):
        raise RuntimeError(
            "this aiortc's RTCRtpReceiver has no jitter buffer, codecs or track where"
            " transports/webrtc_jitter.py expects them: check the aiortc version"
        )
    buffer = ArrivalOrderBuffer(DecodeOnArrival(receiver) if decode else None)
    setattr(receiver, _ATTRIBUTE, buffer)
    return buffer
