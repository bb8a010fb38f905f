"""The SIP codecs with bytes, no sockets: messages, SDP, RTP, RFC 4733, transactions, dialogs.

Captures under ``tests/sip/captures/`` are what baresip 1.0 and sipp 3.6 really sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transports import g711
from transports.sip import dtmf, rtp, sdp
from transports.sip.dialog import Dialog, DialogError, State
from transports.sip.message import (
    Request,
    Response,
    SipError,
    host_port,
    param,
    parse,
    response_to,
    stamp_via,
    uri_of,
)
from transports.sip.transaction import Retransmit, ServerTransactions, Timers, key

CAPTURES = Path(__file__).parent / "sip" / "captures"


def capture(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


# ---------------------------------------------------------------- messages


def test_parse_baresip_invite() -> None:
    invite = parse(capture("baresip_invite.sip"))
    assert isinstance(invite, Request)
    assert invite.method == "INVITE" and invite.uri.startswith("sip:agent@127.0.0.1:")
    assert invite.cseq[1] == "INVITE" and invite.call_id
    assert invite.branch is not None and invite.branch.startswith("z9hG4bK")
    assert invite.from_tag and invite.to_tag is None
    assert invite.get("content-type") == "application/sdp"
    assert invite.body.startswith(b"v=0\r\n") and len(invite.body) == int(
        invite.need("Content-Length")
    )
    assert uri_of(invite.need("Contact")).startswith("sip:caller-")


def test_compact_forms_folding_and_case() -> None:
    data = (
        b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc\r\n"
        b"f: <sip:a@127.0.0.1>;tag=1\r\n"
        b"t: <sip:agent@127.0.0.1>\r\n"
        b"i: call-1\r\n"
        b"cseq: 7\r\n"
        b"  OPTIONS\r\n"
        b"Subject: a long\r\n\tsubject\r\n"
        b"l: 0\r\n\r\n"
    )
    message = parse(data)
    assert isinstance(message, Request)
    assert message.call_id == "call-1" and message.cseq == (7, "OPTIONS")
    assert message.get("Subject") == "a long subject"
    assert message.get("VIA") == "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKabc"
    assert message.branch == "z9hG4bKabc"


def test_content_length_decides_the_body() -> None:
    head = b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 3\r\n\r\n"
    assert parse(head + b"abcdef").body == b"abc"  # extra bytes dropped (RFC 3261 18.3)
    with pytest.raises(SipError, match="only 2 bytes"):
        parse(head + b"ab")
    assert parse(b"MESSAGE sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nrest").body == b"rest"


@pytest.mark.parametrize(
    ("data", "status", "match"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x", 400, "no empty line"),
        (b"INVITE sip:a@b SIP/3.0\r\n\r\n", 505, "version"),
        (b"INVITE  SIP/2.0\r\n\r\n", 400, "request line"),
        (b"INV\x00ITE sip:a@b SIP/2.0\r\n\r\n", 400, "method"),
        (b"INVITE nocolon SIP/2.0\r\n\r\n", 400, "Request-URI"),
        (b"SIP/2.0 99 Odd\r\n\r\n", 400, "status line"),
        (b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", 400, "header line"),
        (b"INVITE sip:a@b SIP/2.0\r\n folded first\r\n\r\n", 400, "continuation"),
        (b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"INVITE sip:a@b SIP/2.0\r\nX: \xff\xfe\r\n\r\n", 400, "UTF-8"),
        (b"X" * 70_000, 413, "larger"),
    ],
)
def test_malformed_messages(data: bytes, status: int, match: str) -> None:
    with pytest.raises(SipError, match=match) as error:
        parse(data)
    assert error.value.status == status


def test_too_many_headers() -> None:
    data = b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X-A: 1\r\n" * 129 + b"\r\n"
    with pytest.raises(SipError, match="more than 128"):
        parse(data)


def test_bad_cseq() -> None:
    message = parse(b"BYE sip:a@b SIP/2.0\r\nCSeq: one BYE\r\n\r\n")
    with pytest.raises(SipError, match="CSeq"):
        _ = message.cseq


def test_response_round_trip_and_response_to() -> None:
    invite = parse(capture("baresip_invite.sip"))
    assert isinstance(invite, Request)
    ok = response_to(invite, 200, to_tag="abc", headers=[("Contact", "<sip:agent@h>")])
    ok.body = b"v=0\r\n"
    data = ok.encode()
    assert data.startswith(b"SIP/2.0 200 OK\r\n")
    again = parse(data)
    assert isinstance(again, Response) and again.status == 200
    assert again.to_tag == "abc" and again.call_id == invite.call_id
    assert again.get_all("Via") == invite.get_all("Via")
    assert again.need("Content-Length") == "5" and again.body == b"v=0\r\n"
    trying = response_to(invite, 100, to_tag="abc")
    assert trying.to_tag is None  # 100 Trying carries no tag


def test_via_stamped_with_received_and_rport() -> None:
    via = "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKx;rport, SIP/2.0/UDP proxy;branch=z9hG4bKy"
    stamped = stamp_via(via, ("203.0.113.7", 40000))
    top, rest = stamped.split(",", 1)
    assert param(top, "rport") == "40000" and param(top, "received") == "203.0.113.7"
    assert rest == " SIP/2.0/UDP proxy;branch=z9hG4bKy"
    plain = stamp_via("SIP/2.0/UDP h:5060;branch=z9hG4bKz", ("127.0.0.1", 5070))
    assert param(plain, "rport") is None and param(plain, "received") == "127.0.0.1"


def test_uri_helpers() -> None:
    assert uri_of('"Bob" <sip:bob@h:5070;transport=udp>;tag=9') == "sip:bob@h:5070;transport=udp"
    assert param('"Bob" <sip:bob@h;tag=no>;tag=9', "tag") == "9"
    assert host_port("sip:bob@127.0.0.1:5070;transport=udp") == ("127.0.0.1", 5070)
    assert host_port("sip:[::1]:5071") == ("::1", 5071)
    assert host_port("sip:example.com") == ("example.com", 5060)
    with pytest.raises(SipError):
        host_port("sip:bob@h:99999")


# ---------------------------------------------------------------- SDP


def test_sdp_offer_from_baresip_and_answer() -> None:
    invite = parse(capture("baresip_invite.sip"))
    offer = sdp.parse_offer(invite.body)
    assert offer.payloads == [0, 8, 101] and offer.telephone_event == 101
    assert offer.address and offer.port > 0 and offer.direction == "sendrecv"
    media = sdp.choose(offer)
    assert media == sdp.Media(0, 101) and media.codec == "PCMU"
    body = sdp.answer(offer, media, "127.0.0.1", 40000, 7).decode()
    assert "m=audio 40000 RTP/AVP 0 101\r\n" in body
    assert "a=rtpmap:101 telephone-event/8000" in body and "a=sendrecv" in body
    again = sdp.parse_offer(body.encode())
    assert (again.address, again.port, again.payloads) == ("127.0.0.1", 40000, [0, 101])


def _sdp(m_line: str, *extra: str, c: str = "c=IN IP4 127.0.0.1") -> bytes:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", c, "t=0 0", m_line, *extra]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_sdp_codec_choice_and_488() -> None:
    pcma_first = sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 8 0"))
    assert sdp.choose(pcma_first) == sdp.Media(8, None)
    g722_first = sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 9 0", "a=rtpmap:9 G722/8000"))
    assert sdp.choose(g722_first) == sdp.Media(9, None)
    assert sdp.choose(g722_first).format.rate == 16000
    with pytest.raises(SipError, match="no usable codec") as error:
        sdp.choose(sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 18 3", "a=rtpmap:18 G729/8000")))
    assert error.value.status == 488
    with pytest.raises(SipError, match="no audio") as error:
        sdp.parse_offer(_sdp("m=video 4000 RTP/AVP 96"))
    assert error.value.status == 488
    with pytest.raises(SipError, match="not supported") as error:
        sdp.parse_offer(_sdp("m=audio 4000 RTP/SAVP 0"))
    assert error.value.status == 488


def test_sdp_hold() -> None:
    held = sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 0", "a=sendonly"))
    assert held.on_hold
    body = sdp.answer(held, sdp.choose(held), "127.0.0.1", 5000, 1, 2).decode()
    assert "a=recvonly" in body and "o=voice 1 2 " in body
    inactive = sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 0", "a=inactive"))
    assert "a=inactive" in sdp.answer(inactive, sdp.Media(0, None), "h", 1, 1).decode()
    old_style = sdp.parse_offer(_sdp("m=audio 4000 RTP/AVP 0", c="c=IN IP4 0.0.0.0"))
    assert old_style.on_hold


@pytest.mark.parametrize(
    "body",
    [b"", b"x=1\r\n", b"v=0\r\nbogus\r\n", b"v=0\r\nm=audio x RTP/AVP 0\r\n", b"v=0\r\nc=IN\r\n"],
)
def test_sdp_malformed(body: bytes) -> None:
    with pytest.raises(SipError):
        sdp.parse_offer(body)


# ---------------------------------------------------------------- RTP


def test_rtp_baresip_packet() -> None:
    packet = rtp.RtpPacket.parse(capture("baresip_rtp_pcmu.bin"))
    assert packet.payload_type == 0 and len(packet.payload) == 160
    assert rtp.RtpPacket.parse(packet.encode()) == packet
    assert len(g711.ulaw_decode(packet.payload)) == rtp.FRAME_SAMPLES


def test_rtp_header_extension_csrc_and_padding() -> None:
    header = bytes([0x80 | 0x20 | 0x10 | 0x01, 0x00]) + (5).to_bytes(2, "big")
    header += (800).to_bytes(4, "big") + (0x1234).to_bytes(4, "big")
    header += b"CSRC" + b"\xbe\xde\x00\x01" + b"EXT!"
    packet = rtp.RtpPacket.parse(header + b"\xff" * 160 + b"\x00\x00\x03")
    assert packet.payload == b"\xff" * 160 and packet.sequence == 5


@pytest.mark.parametrize(
    "data",
    [b"", b"\x80" * 11, b"\x40" + b"\x00" * 20, bytes([0xA0]) + b"\x00" * 11 + b"\x00"],
)
def test_rtp_garbage(data: bytes) -> None:
    with pytest.raises(SipError):
        rtp.RtpPacket.parse(data)


def test_rtcp_is_told_apart() -> None:
    receiver_report = bytes([0x81, 201]) + (7).to_bytes(2, "big") + b"\x00" * 28
    assert rtp.is_rtcp(receiver_report)
    assert not rtp.is_rtcp(capture("baresip_rtp_pcmu.bin"))


def test_packetizer_counts() -> None:
    p = rtp.Packetizer(8, ssrc=1, sequence=0xFFFF, timestamp=0xFFFFFF00)
    first, second = p.packet(b"\xd5" * 160), p.packet(b"\xd5" * 160)
    assert first.marker and not second.marker
    assert (first.sequence, second.sequence) == (0xFFFF, 0)
    assert second.timestamp == (0xFFFFFF00 + 160) & 0xFFFFFFFF
    assert rtp.RtpPacket.parse(second.encode()).payload_type == 8


def frame(value: int) -> np.ndarray:
    return np.full(rtp.FRAME_SAMPLES, value, np.int16)


def test_jitter_buffer_reorders_without_delay_in_order() -> None:
    jb = rtp.JitterBuffer(depth=3)
    assert [f[0] for f in jb.push(10, frame(1))] == [1]
    assert jb.push(12, frame(3)) == []  # 11 missing: held
    assert [f[0] for f in jb.push(11, frame(2))] == [2, 3]
    assert jb.push(11, frame(2)) == [] and jb.late == 1  # a duplicate
    assert jb.lost == 0


def test_jitter_buffer_conceals_a_loss() -> None:
    jb = rtp.JitterBuffer(depth=2)
    jb.push(65535, frame(1000))
    assert jb.push(1, frame(5)) == []  # 0 lost (sequence wraps)
    assert jb.push(2, frame(6)) == []
    out = jb.push(3, frame(7))  # three held > depth: give up on 0
    assert [int(f[0]) for f in out] == [500, 5, 6, 7]  # the last frame, faded, then the rest
    assert jb.lost == 1 and jb.concealed == 1


def test_jitter_buffer_keeps_each_frames_wire_bytes() -> None:
    """Each frame comes out with the G.711 bytes it was decoded from; a concealed one with
    None (nothing was received to relay)."""
    jb = rtp.JitterBuffer(depth=1)
    assert [w for _, w in jb.push_wire(7, (frame(1), b"\x01"))] == [b"\x01"]
    assert jb.push_wire(9, (frame(3), b"\x03")) == []
    out = jb.push_wire(10, (frame(4), b"\x04"))  # 8 lost
    assert [(int(f[0]), w) for f, w in out] == [(0, None), (3, b"\x03"), (4, b"\x04")]


def test_jitter_buffer_skips_event_packets_and_restarts() -> None:
    jb = rtp.JitterBuffer(depth=1)
    jb.push(100, frame(1))
    assert jb.push(101, None) == []  # an RFC 4733 packet takes its sequence number
    assert [f[0] for f in jb.push(102, frame(2))] == [2] and jb.lost == 0
    assert [f[0] for f in jb.push(30000, frame(9))] == [9]  # a new stream: no fake loss
    assert jb.lost == 0


def test_receiver_filters_sources_and_payloads() -> None:
    packet = rtp.Packetizer(0, ssrc=5).packet(b"\xff" * 160).encode()
    r = rtp.Receiver(("192.0.2.2", 4000), {0, 101}, signalling_host="127.0.0.1")
    assert r.accept(packet, ("203.0.113.9", 4000)) is None and r.foreign == 1
    assert r.accept(packet, ("127.0.0.1", 4100)) is not None  # latched
    assert r.destination == ("127.0.0.1", 4100)
    assert r.accept(packet, ("127.0.0.1", 4200)) is None and r.foreign == 2
    assert r.accept(b"garbage!" * 3, ("127.0.0.1", 4100)) is None and r.malformed == 1
    wrong_pt = rtp.Packetizer(18).packet(b"\x00" * 20).encode()
    assert r.accept(wrong_pt, ("127.0.0.1", 4100)) is None and r.malformed == 2
    rtcp = bytes([0x80, 200]) + b"\x00" * 26
    assert r.accept(rtcp, ("127.0.0.1", 4100)) is None and r.rtcp == 1


# ---------------------------------------------------------------- RFC 4733


def _events(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 2], "big")
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def test_dtmf_from_baresip_reported_once() -> None:
    detector = dtmf.Detector()
    digits = []
    for data in _events(capture("baresip_rtp_dtmf.bin")):
        packet = rtp.RtpPacket.parse(data)
        assert packet.payload_type == 101
        digit = detector.receive(packet.timestamp, packet.payload)
        if digit is not None:
            digits.append(digit)
    assert digits == ["5"]
    last = dtmf.Event.parse(
        rtp.RtpPacket.parse(_events(capture("baresip_rtp_dtmf.bin"))[-1]).payload
    )
    assert last.end and last.digit == "5"


def test_dtmf_packets_round_trip() -> None:
    events = dtmf.packets("#", duration_ms=60)
    assert [e.end for e in events] == [False, False, True, True, True]
    assert [e.duration for e in events] == [160, 320, 480, 480, 480]
    assert all(dtmf.Event.parse(e.encode()) == e for e in events)
    assert dtmf.Event.parse(bytes([11, 0x8A, 0x01, 0xE0])) == dtmf.Event("#", True, 10, 480)
    with pytest.raises(SipError):
        dtmf.Event.parse(b"\x10\x00\x00\x00")  # event 16 is not a key
    with pytest.raises(SipError):
        dtmf.Event.parse(b"\x01")
    with pytest.raises(SipError):
        dtmf.check_digits("12x")


# ---------------------------------------------------------------- transactions, dialogs


def test_retransmit_timers() -> None:
    timers = Timers(t1=0.5, t2=4.0)
    again = Retransmit(b"200", 0.0, timers)
    sent_at = []
    now = 0.0
    while not again.expired and now < 40:
        now = again.next_at
        if again.due(now) is not None:
            sent_at.append(now)
    assert sent_at[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # T1, doubling, capped at T2
    assert sent_at[-1] <= 32.0 and again.expired  # 64*T1
    stopped = Retransmit(b"x", 0.0, timers)
    stopped.stop()
    assert stopped.due(1.0) is None


def test_server_transactions_remember_and_expire() -> None:
    invite = parse(capture("baresip_invite.sip"))
    assert isinstance(invite, Request)
    table = ServerTransactions(Timers(), limit=2)
    k = key(invite, ("127.0.0.1", 5070))
    assert table.seen(k, 0.0) == (False, None)
    table.answered(k, b"SIP/2.0 200 OK", 0.0)
    assert table.seen(k, 10.0) == (True, b"SIP/2.0 200 OK")
    assert table.seen(k, 33.0) == (False, None)  # 64*T1 later: forgotten
    for i in range(3):
        table.answered(("b", str(i), "BYE"), b"", 40.0)
    assert len(table) == 2  # bounded: the oldest went first


def test_dialog_transitions_are_data() -> None:
    invite = parse(capture("baresip_invite.sip"))
    assert isinstance(invite, Request)
    dialog = Dialog.from_invite(invite, "sip:agent@127.0.0.1:5060")
    assert dialog.state is State.INCOMING and dialog.remote_tag == invite.from_tag
    dialog.fire("ring")
    with pytest.raises(DialogError, match="'ack' not allowed in state early"):
        dialog.fire("ack")
    dialog.fire("answer")
    dialog.fire("ack")
    assert dialog.state is State.CONFIRMED
    bye = parse(capture("baresip_bye.sip"))
    assert isinstance(bye, Request)
    assert not dialog.matches(bye)  # its To tag is another dialog's
    bye.set("To", f"<{dialog.local_uri}>;tag={dialog.local_tag}")
    assert dialog.matches(bye)
    dialog.check_cseq(bye)
    with pytest.raises(SipError, match="CSeq"):
        dialog.check_cseq(bye)  # the same CSeq again
    ours = dialog.request("BYE", "127.0.0.1:5060")
    assert ours.uri == dialog.remote_target and ours.cseq == (dialog.local_cseq, "BYE")
    assert ours.to_tag == dialog.remote_tag and ours.from_tag == dialog.local_tag
    dialog.fire("bye")
    with pytest.raises(DialogError):
        dialog.fire("bye")


def test_sipp_captures() -> None:
    invite = parse(capture("sipp_invite_pcma.sip"))
    assert isinstance(invite, Request) and invite.method == "INVITE"
    offer = sdp.parse_offer(invite.body)
    assert sdp.choose(offer) == sdp.Media(8, 101) and offer.ptime == 30
    detector = dtmf.Detector()
    packets = [rtp.RtpPacket.parse(p) for p in _events(capture("sipp_rtp_dtmf1.bin"))]
    digits = [detector.receive(p.timestamp, p.payload) for p in packets]
    assert [d for d in digits if d is not None] == ["1"]
    assert packets[0].marker and dtmf.Event.parse(packets[-1].payload).end
