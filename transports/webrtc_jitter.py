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
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"
_HALF = 1 << 15


class ArrivalOrderBuffer:
    """Sans-I/O: ``add(packet)`` → ``(False, frame or None)``, aiortc's ``JitterBuffer.add``
    contract (the flag asks for a video key frame: never, for audio)."""

    def __init__(self) -> None:
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
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def release_on_arrival(receiver: RTCRtpReceiver) -> ArrivalOrderBuffer:
    """Give an audio receiver an :class:`ArrivalOrderBuffer` (before any packet has arrived);
    returns it (its counters say what the link lost). Raises RuntimeError when this aiortc keeps
    its jitter buffer elsewhere."""
    if not isinstance(getattr(receiver, _ATTRIBUTE, None), JitterBuffer):
        raise RuntimeError(
            "this aiortc's RTCRtpReceiver has no jitter buffer where transports/webrtc_jitter.py"
            " expects it: check the aiortc version"
        )
    buffer = ArrivalOrderBuffer()
    setattr(receiver, _ATTRIBUTE, buffer)
    return buffer
