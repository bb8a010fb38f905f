"""``voice bench --protocol baresip``: a real softphone (Debian's baresip) calls the in-process
server (its SIP agent, fake engines: a loudness VAD, scripted ASR and LLM, a tone for a voice)
over loopback, and the harness times the call on the wire (a raw socket on ``lo``, root).

One plain turn and one barge-in turn go through the harness's own runner: the turns are
measured from packets baresip sent and received (a voice-to-voice figure, the reply audible,
the interruption cut the reply), as for the other callers. The wire's bookkeeping
(:class:`SpeechMarks`, :class:`CallWire`, IPv4/UDP parsing) is checked with bytes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.harness import cli as bench_cli
from benchmarks.harness import softphone
from benchmarks.harness.baresip_caller import BaresipCall, SpeechMarks
from benchmarks.harness.protocols import parse_protocols
from benchmarks.harness.runner import Timing, run_conversation
from benchmarks.harness.scenarios import (
    BargeIn,
    RenderedScenario,
    RenderedTurn,
    Scenario,
    Segment,
    TurnScript,
)
from benchmarks.harness.timeline import BARESIP
from benchmarks.harness.webrtc_client import open_any_call
from benchmarks.harness.wiretap import CallWire, Datagram, RtpSeen, parse_udp
from transports import g711
from transports.sip import rtp
from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines

RATE = 8000
ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent


def voice(seconds: float, hz: float = 330.0, amplitude: int = 8000) -> np.ndarray:
    """The caller: a loud tone (not the agent's 220 Hz)."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


def interruption() -> np.ndarray:
    """Audible from its first packet (|x| > 500), speech to the fake VAD (mean |x| > 1000) only
    100 ms later: the agent stops a few packets after the onset, not within the same 20 ms
    (faster than the wire's grid, the reply would seem to have stopped before it)."""
    return np.concatenate([voice(0.1, amplitude=700), voice(0.5)])


@pytest.fixture
async def fake_server() -> AsyncIterator[VoiceServer]:
    long = " ".join(["word"] * 20)  # 4 s of tone: every reply after the first
    engines = fake_engines(["hello"], ["Hello there, how are you?", long])
    server = VoiceServer(conftest.test_config(), engines)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


@pytest.mark.e2e
@pytest.mark.skipif(not ROOT, reason="the wire tap needs root (CI and make test run as root)")
async def test_baresip_calls_and_the_wire_measures_a_turn_and_a_barge_in(
    fake_server: VoiceServer,
) -> None:
    if not softphone.installed():
        pytest.fail("baresip is required (make test installs it)")
    assert fake_server.sip is not None
    turns = [
        RenderedTurn(TurnScript("hello", (Segment("hello"),)), [voice(0.5)], rate=RATE),
        RenderedTurn(
            TurnScript("paused", (Segment("a", 300), Segment("b")), BargeIn(1000, "stop")),
            [voice(0.4), voice(0.4)],
            barge_in=interruption(),
            rate=RATE,
        ),
    ]
    scenario = RenderedScenario(Scenario("fake", "none", tuple(t.script for t in turns)), turns)
    timing = Timing(turn_timeout_s=10.0, settle_s=0.5, gap_s=0.3, quiet_s=0.8)
    lines: list[dict[str, Any]] = []
    url = f"sip:agent@127.0.0.1:{fake_server.sip.port}"
    records, time_up = await run_conversation(
        BARESIP,
        url,
        scenario,
        timing,
        time.perf_counter() + 90,
        lines.append,
        {"config": "fake"},
        opener=open_any_call,
    )
    assert not time_up and len(records) == len(lines) == 2, records
    simple, barge = records
    assert simple["errors"] == [] and not simple["missed"], simple
    assert simple["voice_to_voice_ms"] is not None and simple["voice_to_voice_ms"] > 0, simple
    assert barge["pauses"] == [{"pause_ms": 300, "false_interruption": False}], barge
    b = barge["barge_in"]
    assert b is not None and b["reply_playing"], barge  # it landed inside the 4 s reply
    assert b["latency_ms"] is not None and b["latency_ms"] >= 0, b  # and the reply stopped:
    assert b["interrupted"] and b["cut_off"], b  # cut mid-speech, as the wire shows
    assert b["reply_v2v_ms"] is not None  # the reply to the interruption was heard too


def test_baresip_is_a_protocol_beside_the_others() -> None:
    assert parse_protocols("realtime,sip,baresip") == ["realtime", "sip", "baresip"]
    assert isinstance(open_any_call(BARESIP, "sip:agent@127.0.0.1:5060"), BaresipCall)
    with pytest.raises(SystemExit):
        bench_cli.main(["--protocol", "baresip", "--echo", "200:-12"])


# ---------------------------------------------------------------- the wire, with bytes


def udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    def ip(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))

    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0, ip(src[0]), ip(dst[0])
    )
    return header + struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def sip_with_sdp(first_line: str, port: int) -> bytes:
    body = (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()
    head = (
        f"{first_line}\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
        "From: <sip:caller@127.0.0.1>;tag=a\r\nTo: <sip:agent@127.0.0.1>\r\nCall-ID: x\r\n"
        f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_udp_over_ipv4_is_read_and_anything_else_is_not() -> None:
    packet = udp(("127.0.0.1", 5070), ("127.0.0.2", 5060), b"hello")
    d = parse_udp(packet, 1.5)
    assert d == Datagram(1.5, ("127.0.0.1", 5070), ("127.0.0.2", 5060), b"hello")
    assert parse_udp(packet[:20], 0.0) is None  # truncated
    fragment = packet[:6] + b"\x20\x00" + packet[8:]  # more fragments follow
    assert parse_udp(fragment, 0.0) is None
    assert parse_udp(b"\x60" + packet[1:], 0.0) is None  # IPv6


def test_the_call_wire_takes_its_ports_from_the_sdp_and_sorts_the_media() -> None:
    up: list[RtpSeen] = []
    down: list[RtpSeen] = []
    phone, server = ("127.0.0.1", 5070), ("127.0.0.1", 5060)
    wire = CallWire(phone, up.append, down.append)
    loud = g711.ulaw_encode(voice(0.02))
    quiet = g711.ulaw_encode(np.zeros(160, np.int16))

    def media(src: int, dst: int, payload: bytes, t: float, pt: int = 0) -> None:
        packet = rtp.RtpPacket(pt, 1, 160, 7, payload).encode()
        wire.feed(Datagram(t, ("127.0.0.1", src), ("127.0.0.1", dst), packet))

    media(20000, 30000, loud, 0.0)  # before the SDP: not yet the call's
    wire.feed(
        Datagram(0.1, phone, server, sip_with_sdp("INVITE sip:agent@127.0.0.1 SIP/2.0", 20000))
    )
    wire.feed(Datagram(0.2, server, phone, sip_with_sdp("SIP/2.0 200 OK", 30000)))
    assert wire.phone_rtp == ("127.0.0.1", 20000) and wire.server_rtp == ("127.0.0.1", 30000)
    media(20000, 30000, loud, 1.0)
    media(30000, 20000, quiet, 2.0)
    media(30000, 20000, loud, 3.0)
    media(30000, 20000, b"\x01\x02", 4.0, pt=101)  # a DTMF event: not audio
    media(20001, 30001, loud, 5.0)  # RTCP's ports
    assert [(p.t, p.timestamp, p.samples, p.loud) for p in up] == [(1.0, 160, 160, True)]
    assert [(p.t, p.loud) for p in down] == [(2.0, False), (3.0, True)]
    assert np.array_equal(down[1].audio, g711.ulaw_decode(loud))


def seen(t: float, timestamp: int, loud: bool) -> RtpSeen:
    """A 20 ms packet the phone sent (its audio only matters through ``loud``)."""
    return RtpSeen(t, timestamp, np.zeros(160, np.int16), loud)


def test_speech_marks_anchor_on_the_first_audible_packet_and_follow_rtp_timestamps() -> None:
    # two utterances in the file: samples 400..1999 and 4800..6399 (0.3 s apart)
    marks = SpeechMarks([(400, 1999), (4800, 6399)])
    base = 1_000_000

    def sent(chunk: int, loud: bool) -> None:  # the packet holding file samples chunk*160...
        marks.feed(seen(100.0 + chunk / 50, base + chunk * 160, loud))

    sent(-3, False)  # the previous file's silence: no anchor yet
    for chunk in range(0, 60):
        sent(chunk, 2 <= chunk <= 12 or 30 <= chunk <= 39)
    assert marks.onsets == [100.0 + 2 / 50, 100.0 + 30 / 50]
    assert marks.ends == [100.0 + 12 / 50, 100.0 + 39 / 50]
    assert marks.settled == 2


def test_an_utterance_ends_only_once_the_wire_is_past_it() -> None:
    marks = SpeechMarks([(0, 799)])
    for chunk in range(5):
        marks.feed(seen(chunk / 50, (2**32 - 320 + chunk * 160) % 2**32, True))
    assert marks.settled == 0 and marks.ends[0] == 4 / 50  # (across the timestamp's wrap)
    marks.feed(seen(5 / 50, 480, False))
    assert marks.settled == 0  # 40 ms of tolerance not yet past
    marks.feed(seen(7 / 50, 800, False))
    assert marks.settled == 1 and marks.ends[0] == 4 / 50


def test_without_the_capability_the_bench_says_why() -> None:
    """Not root (here root without ``CAP_NET_RAW``, as ``setpriv`` leaves it): ``voice bench
    --protocol baresip`` stops at once and names what it lacks."""
    command = [sys.executable, "-m", "benchmarks.harness", "--protocol", "realtime,baresip"]
    if ROOT:
        command = ["setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw", *command]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "raw AF_PACKET socket, which needs root (CAP_NET_RAW)" in done.stdout, done.stdout
