"""RTP (RFC 3550) for a telephone call (G.711, G.722), sans-I/O: packets, the sender's
counters, a small jitter buffer with loss concealment, and the receive-side filter.

- :class:`RtpPacket` parses and serializes the fixed header (CSRCs, a header extension and
  padding are read and skipped). :func:`is_rtcp` tells RTCP apart when it shares the port
  (RFC 5761): it is ignored, never an error.
- :class:`Packetizer` stamps 20 ms frames with a sequence number, timestamp and SSRC (random
  starts, RFC 3550 §5.1).
- :class:`JitterBuffer` releases packets in sequence order with no delay while they arrive in
  order; when one is missing it holds up to ``depth`` later packets waiting for it, then gives up
  and conceals the gap (the last frame repeated, fading, then silence). Late and duplicate
  packets are dropped.
- :class:`Receiver` decides what to accept: RTP from the address the SDP named (the first
  source port seen from it is latched: symmetric RTP), a negotiated payload type, a sane header;
  everything else is counted and dropped.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field

import numpy as np

from .message import SipError

HEADER = struct.Struct("!BBHII")
FRAME_TICKS = 160
"""20 ms on the RTP clock (8 kHz for every codec here, G.722's included)."""
FRAME_SAMPLES = 160
"""20 ms of audio at 8 kHz (G.711)."""
MAX_PACKET_BYTES = 1500
MAX_GAP = 50
"""A jump of more than this many sequence numbers is a new stream start, not a loss."""
CONCEAL_FRAMES = 3
"""Frames of a gap filled with the last frame, fading; the rest of the gap is silence."""


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False

    def encode(self) -> bytes:
        first = 0x80  # version 2, no padding, no extension, no CSRC
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        return HEADER.pack(first, second, self.sequence, self.timestamp, self.ssrc) + self.payload

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """One RTP packet; raises :class:`SipError` for anything that is not one."""
        if len(data) < HEADER.size or len(data) > MAX_PACKET_BYTES:
            raise SipError(f"RTP packet of {len(data)} bytes", code="invalid_rtp")
        first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
        if first >> 6 != 2:
            raise SipError(f"RTP version {first >> 6}", code="invalid_rtp")
        offset = HEADER.size + 4 * (first & 0x0F)
        if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
            if len(data) < offset + 4:
                raise SipError("RTP extension past the end", code="invalid_rtp")
            (words,) = struct.unpack_from("!H", data, offset + 2)
            offset += 4 + 4 * words
        end = len(data)
        if first & 0x20:  # padding: the last byte counts it
            end -= data[-1]
        if offset > end or (first & 0x20 and data[-1] == 0):
            raise SipError("RTP header or padding longer than the packet", code="invalid_rtp")
        return cls(second & 0x7F, sequence, timestamp, ssrc, data[offset:end], bool(second & 0x80))


def is_rtcp(data: bytes) -> bool:
    """RTCP (sender/receiver reports, SDES, BYE, APP: packet types 200-204) on the RTP port."""
    return len(data) >= 2 and data[0] >> 6 == 2 and 200 <= data[1] <= 204


@dataclass(slots=True)
class Packetizer:
    """Our stream's counters: one packet per 20 ms frame."""

    payload_type: int
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    marker_next: bool = True

    def packet(self, payload: bytes, *, payload_type: int | None = None) -> RtpPacket:
        """The next packet (the timestamp advances by the samples of ``payload``)."""
        pkt = RtpPacket(
            self.payload_type if payload_type is None else payload_type,
            self.sequence,
            self.timestamp,
            self.ssrc,
            payload,
            self.marker_next,
        )
        self.marker_next = False
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + len(payload)) & 0xFFFFFFFF
        return pkt

    def event(self, payload: bytes, timestamp: int, *, marker: bool, pt: int) -> RtpPacket:
        """A packet with its own timestamp (an RFC 4733 event keeps its start's)."""
        pkt = RtpPacket(pt, self.sequence, timestamp, self.ssrc, payload, marker)
        self.sequence = (self.sequence + 1) & 0xFFFF
        return pkt

    def skip(self, samples: int) -> None:
        """Time passed without audio (an event was sent instead)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF


def seq_after(a: int, b: int) -> int:
    """How many sequence numbers ``a`` comes after ``b`` (negative: before), mod 2**16."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


class JitterBuffer:
    """Reorders a stream of frames and conceals losses; no clock, driven by arrivals.

    :meth:`push` returns the frames (int16 arrays) now ready to play, in order. A packet that
    carries no audio (an RFC 4733 event takes sequence numbers too) is pushed as None: it fills
    its place in the sequence and plays nothing.
    """

    def __init__(self, depth: int = 3, frame_samples: int = FRAME_SAMPLES) -> None:
        self.depth = depth
        self.frame_samples = frame_samples
        """The length of a silent frame filling a gap (the codec's 20 ms)."""
        self._next: int | None = None
        self._held: dict[int, tuple[np.ndarray, bytes | None] | None] = {}
        self._last = np.zeros(frame_samples, np.int16)
        self.lost = 0
        self.late = 0
        self.concealed = 0

    def push(self, sequence: int, frame: np.ndarray | None) -> list[np.ndarray]:
        return [f for f, _ in self.push_wire(sequence, None if frame is None else (frame, None))]

    def push_wire(
        self, sequence: int, frame: tuple[np.ndarray, bytes | None] | None
    ) -> list[tuple[np.ndarray, bytes | None]]:
        """:meth:`push` for a frame with the bytes it was decoded from: each frame comes
        out with its bytes, a concealed one with None (a remote engine may relay the bytes)."""
        if self._next is None or abs(seq_after(sequence, self._next)) > MAX_GAP:
            self._next, self._held = sequence, {}  # the first packet, or the stream restarted
        ahead = seq_after(sequence, self._next)
        if ahead < 0 or sequence in self._held:
            self.late += 1
            return []
        self._held[sequence] = frame
        out = self._release()
        if len(self._held) > self.depth:  # the missing packet is not coming: conceal it
            out += self._skip_gap()
            out += self._release()
        return out

    def _release(self) -> list[tuple[np.ndarray, bytes | None]]:
        out: list[tuple[np.ndarray, bytes | None]] = []
        assert self._next is not None
        while self._next in self._held:
            frame = self._held.pop(self._next)
            if frame is not None:
                self._last = frame[0]
                out.append(frame)
            self._next = (self._next + 1) & 0xFFFF
        return out

    def _skip_gap(self) -> list[tuple[np.ndarray, bytes | None]]:
        assert self._next is not None
        first = min(self._held, key=lambda s: seq_after(s, self._next or 0))
        missing = seq_after(first, self._next)
        self.lost += missing
        out: list[tuple[np.ndarray, bytes | None]] = []
        for i in range(missing):
            if i < CONCEAL_FRAMES:
                fade = 0.5 ** (i + 1)
                out.append(((self._last.astype(np.float32) * fade).astype(np.int16), None))
                self.concealed += 1
            else:
                out.append((np.zeros(self.frame_samples, np.int16), None))
        self._next = first
        return out


class Receiver:
    """Which datagrams on our RTP port are the call's audio.

    ``expected`` is the address the SDP named; RTP is taken from that host or from
    ``signalling_host`` (where the call's SIP comes from: a phone behind NAT, or one that puts
    another interface's address in its SDP), from any other host it is dropped. The first
    source seen is latched (symmetric RTP: we send there too); any other source later is
    dropped as well.
    """

    def __init__(
        self, expected: tuple[str, int], payloads: set[int], signalling_host: str | None = None
    ) -> None:
        self.expected = expected
        self.hosts = {expected[0]} | ({signalling_host} if signalling_host else set())
        self.latched: tuple[str, int] | None = None
        self.payloads = payloads
        self.foreign = 0
        self.malformed = 0
        self.rtcp = 0

    def accept(self, data: bytes, addr: tuple[str, int]) -> RtpPacket | None:
        """The packet if it is ours, else None (counted)."""
        source = (addr[0], addr[1])
        if source[0] not in self.hosts or (self.latched and source != self.latched):
            self.foreign += 1
            return None
        if is_rtcp(data):
            self.rtcp += 1
            return None
        try:
            packet = RtpPacket.parse(data)
        except SipError:
            self.malformed += 1
            return None
        if packet.payload_type not in self.payloads:
            self.malformed += 1
            return None
        if self.latched is None:
            self.latched = source
        return packet

    @property
    def destination(self) -> tuple[str, int]:
        """Where to send our RTP: the latched source, else what the SDP said."""
        return self.latched or self.expected
