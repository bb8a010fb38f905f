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
