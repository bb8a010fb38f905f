"""Incoming WebRTC audio goes to the decoder as it arrives (``transports/webrtc_jitter.py``):
packets in, frames out, no network; and the buffer takes its place in a real aiortc receiver."""

from __future__ import annotations

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from transports.webrtc_jitter import ArrivalOrderBuffer, release_on_arrival


def packet(seq: int) -> RtpPacket:
    """An Opus packet as it comes off the wire: a 20 ms frame per packet, 960 ticks apart."""
    wire = RtpPacket(
        payload_type=111,
        sequence_number=seq & 0xFFFF,
        timestamp=(seq * 960) & 0xFFFFFFFF,
        payload=bytes([0x78, seq & 0xFF, 0x01]),
    )
    return RtpPacket.parse(wire.serialize())


def released(buffer: ArrivalOrderBuffer, seqs: list[int]) -> list[int | None]:
    """What each packet added gives back (the second byte of its payload), None for nothing."""
    out: list[int | None] = []
    for seq in seqs:
        flag, frame = buffer.add(packet(seq))
        assert flag is False  # audio never asks for a key frame
        out.append(None if frame is None else frame.data[1])
    return out


def test_every_packet_is_released_as_it_arrives() -> None:
    buffer = ArrivalOrderBuffer()
    assert released(buffer, [10, 11, 12, 13]) == [10, 11, 12, 13]
    _, frame = ArrivalOrderBuffer().add(packet(7))
    assert frame is not None and frame.timestamp == 7 * 960
    assert (buffer.released, buffer.lost, buffer.dropped) == (4, 0, 0)


def test_a_lost_packet_does_not_hold_back_the_ones_after_it() -> None:
    buffer = ArrivalOrderBuffer()
    assert released(buffer, [1, 2, 4, 5, 8]) == [1, 2, 4, 5, 8]
    assert buffer.lost == 3


def test_a_late_or_repeated_packet_is_dropped() -> None:
    buffer = ArrivalOrderBuffer()
    assert released(buffer, [1, 3, 2, 3, 4]) == [1, 3, None, None, 4]
    assert (buffer.released, buffer.lost, buffer.dropped) == (3, 1, 2)


def test_sequence_numbers_wrap_around() -> None:
    buffer = ArrivalOrderBuffer()
    assert released(buffer, [0xFFFE, 0xFFFF, 0x10000, 0x10001]) == [0xFE, 0xFF, 0x00, 0x01]
    assert buffer.lost == 0 and buffer.dropped == 0


async def test_it_replaces_the_receivers_playout_buffer() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        buffer = release_on_arrival(receiver)
        assert receiver._RTCRtpReceiver__jitter_buffer is buffer  # type: ignore[attr-defined]
        with pytest.raises(RuntimeError, match="aiortc"):
            release_on_arrival(receiver)  # not aiortc's buffer any more: refused, not stacked
    finally:
        await pc.close()


def opus_stream(seconds: float, level: int = 8000) -> list[RtpPacket]:
    """A 330 Hz tone as the caller's Opus packets (20 ms each) off the wire."""
    import fractions

    import numpy as np
    from av import AudioFrame

    from transports.webrtc import OpusFrames

    encoder = OpusFrames(960)
    t = np.arange(int(seconds * 48000)) / 48000
    tone = (level * np.sin(2 * np.pi * 330 * t)).astype(np.int16)
    out = []
    for seq, start in enumerate(range(0, len(tone), 960)):
        frame = AudioFrame.from_ndarray(tone[start : start + 960].reshape(1, -1), layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        frame.time_base = fractions.Fraction(1, 48000)
        wire = RtpPacket(
            payload_type=111,
            sequence_number=seq,
            timestamp=(start + 0xFFFFF000) & 0xFFFFFFFF,  # (wraps)
            payload=bytes(encoder.encode(frame)),
        )
        out.append(RtpPacket.parse(wire.serialize()))
    return out


async def test_packets_are_decoded_on_arrival_into_the_track_as_mono() -> None:
    from types import SimpleNamespace

    import numpy as np
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtcrtpreceiver import RemoteStreamTrack

    from transports.webrtc_jitter import DecodeOnArrival

    opus = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    receiver = SimpleNamespace(
        _RTCRtpReceiver__codecs={111: opus}, _track=RemoteStreamTrack("audio")
    )
    decode = DecodeOnArrival(receiver)  # type: ignore[arg-type]
    buffer = ArrivalOrderBuffer(decode)
    packets = opus_stream(0.2)
    garbage = RtpPacket.parse(
        RtpPacket(payload_type=111, sequence_number=5, payload=b"\xff" * 3).serialize()
    )
    for p in [*packets[:5], garbage, *packets[6:]]:
        assert buffer.add(p) == (False, None)  # nothing left for aiortc's decoder thread
    frames = [receiver._track._queue.get_nowait() for _ in range(len(packets) - 1)]
    assert receiver._track._queue.empty()
    assert decode.errors == 1  # the garbage packet: counted, skipped, the stream goes on
    for frame in frames:
        assert (frame.layout.name, frame.sample_rate, frame.samples) == ("mono", 48000, 960)
    assert [f.pts for f in frames] == [960 * k for k in range(10) if k != 5]  # RTP time from 0
    level = [int(np.abs(f.to_ndarray()).max()) for f in frames]
    assert all(6000 < v < 10000 for v in level[2:])  # the tone, at its level, in one channel


async def test_a_real_receiver_gets_a_decoding_buffer_unless_asked_not_to() -> None:
    pc = RTCPeerConnection()
    try:
        decoding = release_on_arrival(pc.addTransceiver("audio").receiver)
        plain = release_on_arrival(pc.addTransceiver("audio").receiver, decode=False)
        assert decoding.decode is not None and plain.decode is None
    finally:
        await pc.close()
