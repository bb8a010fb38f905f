"""A phone call's G.711 relayed to an OpenAI Realtime upstream as is: the upstream session is set
up in the caller's format and gets the very bytes the caller sent (no decoding, no resampling);
its G.711 replies come back at 8 kHz. Off (``g711_passthrough``), the relay falls back to 24 kHz
PCM. The codec on bytes, a session against a scripted upstream (the frames on the wire), then a
Twilio media stream through this server to this server as the upstream, on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.handoff import base as b
from pipeline.handoff.openai_realtime import OpenAiRealtimeCodec
from pipeline.session import Session, SessionSettings
from transports import g711
from transports.sip.rtp import Packetizer
from transports.sip.sdp import parse_offer
from voice.server import VoiceServer

from .fakes import fake_engines, silence, tone
from .handoff_peers import CREATED, WITHIN, Front, ScriptedUpstream, frame, peer_server
from .realtime_client import Caller
from .sip.peer import Peer as SipPeer
from .test_e2e_twilio import FakeTwilio

CHUNK = 160
"""20 ms of 8 kHz G.711: a byte a sample."""


def _line(seconds: float) -> bytes:
    """A caller's μ-law line: every one of the 256 codes (0x7F and 0xFF, μ-law's two zeros,
    included), then a loud tone (speech) and silence."""
    codes = bytes(range(256)) * 4
    speech = g711.ulaw_encode(np.concatenate([tone(seconds, 8000), silence(1.5, 8000)]))
    return codes + speech


def _appends(events: list[dict[str, Any]]) -> list[bytes]:
    return [
        base64.b64decode(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append"
    ]


# ---------------------------------------------------------------- the codec, on bytes


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_the_upstream_is_set_up_in_the_callers_format(fmt: str) -> None:
    codec = OpenAiRealtimeCodec(b.UpstreamSettings("ws://up/v1/realtime"))
    (update,) = [json.loads(f) for f in codec.setup(b.SessionSetup("Hi.", wire_format=fmt))]
    audio = update["session"]["audio"]
    assert audio["input"]["format"] == audio["output"]["format"] == {"type": fmt}
    assert codec.input_rate == codec.output_rate == 8000
    payload = bytes(range(256))
    (append,) = [json.loads(f) for f in codec.wire(payload) or []]
    assert append == {
        "type": "input_audio_buffer.append",
        "audio": base64.b64encode(payload).decode(),
    }
    # PCM the relay made itself (this server's turn, resampled to 8 kHz) is encoded in the format
    pcm = np.array([0, 1000, -1000, 32767], dtype=np.int16)
    (encoded,) = [json.loads(f) for f in codec.audio(pcm.astype("<i2").tobytes())]
    encode = g711.ulaw_encode if fmt == "audio/pcmu" else g711.alaw_encode
    assert base64.b64decode(encoded["audio"]) == encode(pcm)
    # its replies come back in the format: decoded exactly, at 8 kHz
    decode = g711.ulaw_decode if fmt == "audio/pcmu" else g711.alaw_decode
    delta = frame(
        "response.output_audio.delta",
        response_id="r1",
        item_id="i1",
        delta=base64.b64encode(payload).decode(),
    )
    (event,) = codec.receive(delta)
    assert isinstance(event, b.AudioDelta)
    assert np.array_equal(event.audio, decode(payload)) and event.audio.dtype == np.int16


@pytest.mark.parametrize(
    ("wire_format", "passthrough"), [("", True), ("audio/pcmu", False), ("audio/opus", True)]
)
def test_otherwise_the_upstream_gets_24_khz_pcm(wire_format: str, passthrough: bool) -> None:
    codec = OpenAiRealtimeCodec(
        b.UpstreamSettings("ws://up/v1/realtime", g711_passthrough=passthrough)
    )
    (update,) = [json.loads(f) for f in codec.setup(b.SessionSetup("Hi.", wire_format=wire_format))]
    pcm = {"type": "audio/pcm", "rate": 24_000}
    assert update["session"]["audio"]["input"]["format"] == pcm
    assert update["session"]["audio"]["output"]["format"] == pcm
    assert codec.input_rate == codec.output_rate == 24_000
    assert codec.wire(b"\x00" * 160) is None


# ---------------------------------------------------------------- a session, the wire


async def _relay_line(passthrough: bool) -> tuple[bytes, list[bytes], dict[str, Any]]:
    """A phone session (μ-law) relayed to a scripted upstream: what the caller sent, the
    appends the upstream received, and the session it was set up with."""
    line = _line(0.6)
    chunks = [line[i : i + CHUNK] for i in range(0, len(line), CHUNK)]
    seen = 0

    def script(event: dict[str, Any]) -> list[str]:
        nonlocal seen
        if event["type"] == "input_audio_buffer.append":
            seen += 1
            if seen == len(chunks):  # the last one: a sign the front can wait for
                return [frame("input_audio_buffer.speech_started", item_id="u1")]
        return []

    settings = SessionSettings(output_rate=8000, wire_format="audio/pcmu")
    async with ScriptedUpstream([CREATED], script) as upstream:
        engines = fake_engines(["x"], ["x"])
        async with Front(
            engines, upstream.url, settings=settings, g711_passthrough=passthrough
        ) as front:
            await front.remote()
            for chunk in chunks:
                front.session.append_audio(g711.ulaw_decode(chunk), 8000, wire=chunk)
            await front.until(lambda: front.of(m.SpeechStarted), "the last append upstream")
        (update,) = [e for e in upstream.received if e["type"] == "session.update"]
        return line, _appends(upstream.received), update["session"]


async def test_the_callers_bytes_go_upstream_untouched() -> None:
    line, appends, session = await _relay_line(passthrough=True)
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    # frame for frame, byte for byte (μ-law's negative zero, 0x7F, included)
    assert appends == [line[i : i + CHUNK] for i in range(0, len(line), CHUNK)]


async def test_with_the_setting_off_the_upstream_gets_24_khz_pcm() -> None:
    line, appends, session = await _relay_line(passthrough=False)
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    pcm = np.frombuffer(b"".join(appends), dtype="<i2")
    assert abs(len(pcm) - 3 * len(line)) <= 3 * CHUNK  # 8 → 24 kHz (the resampler's delay)


# ---------------------------------------------------------------- Twilio, on loopback


class RecordingTwilio(FakeTwilio):
    """The fake Twilio line, keeping the μ-law payload of each ``media`` message it sends."""

    sent_payloads: list[bytes]

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        if isinstance(message, dict) and message.get("event") == "media":
            self.sent_payloads.append(base64.b64decode(message["media"]["payload"]))
        await super().send(message)


class Taps:
    """The sessions a server opens, each with what it was given of the caller's audio."""

    def __init__(self, server: VoiceServer) -> None:
        self.sessions: list[Session] = []
        self.chunks: list[tuple[int, np.ndarray]] = []
        opened = server.new_session

        def new_session(**kw: Any) -> Session:
            session = opened(**kw)
            session.input_taps.append(lambda samples, rate: self.chunks.append((rate, samples)))
            self.sessions.append(session)
            return session

        server.new_session = new_session  # type: ignore[method-assign]


def _found_in(got: list[np.ndarray], sent: list[bytes]) -> bool:
    """``got`` is a run of ``sent`` decoded, frame for frame."""
    run = np.concatenate(got)
    return any(
        np.array_equal(run, g711.ulaw_decode(b"".join(sent[k : k + len(got)])))
        for k in range(len(sent) - len(got) + 1)
    )


async def test_a_twilio_call_relayed_in_mulaw_to_the_upstream() -> None:
    remote = fake_engines(["hello remote"], ["Remote says hi there."], 50)
    async with peer_server(remote) as peer:
        taps = Taps(peer)
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": url}
        async with (
            peer_server(fake_engines(["never"], ["Never."]), **settings) as front,
            RecordingTwilio(front.port) as twilio,  # type: ignore[arg-type]
        ):
            twilio.sent_payloads = []
            await twilio.start()
            twilio.say(np.concatenate([tone(0.8, 8000), silence(0.1, 8000)]))
            await twilio.wait_for(lambda: twilio.index_of("mark"), WITHIN, "the relayed reply")
            await twilio.stop()
    (session,) = taps.sessions

    # the upstream was set up in μ-law (8 kHz both ways), and fed the caller's 20 ms frames
    assert session.settings.wire_format == "audio/pcmu" and session.settings.output_rate == 8000
    assert taps.chunks and {rate for rate, _ in taps.chunks} == {8000}
    got = [samples for _, samples in taps.chunks]
    assert {len(s) for s in got} == {CHUNK}
    assert len(got) >= 0.8 / 0.02  # the speech, at least
    # what it decoded is exactly what the caller's bytes say, in order (nothing transcoded)
    assert _found_in(got, twilio.sent_payloads)
    items = [(i.role, i.text) for i in session.conversation.items]
    assert items == [("user", "hello remote"), ("assistant", "Remote says hi there.")]
    # and its μ-law reply reached the caller as 20 ms frames
    reply = [base64.b64decode(msg["media"]["payload"]) for msg in twilio.of("media")]
    assert reply and {len(p) for p in reply} == {CHUNK}
    assert np.abs(g711.ulaw_decode(b"".join(reply))).max() > 1000


async def test_a_realtime_client_in_alaw_is_relayed_in_alaw() -> None:
    """A client that chose ``audio/pcma`` both ways (after the upstream was set up in PCM): the
    upstream is set up again in A-law, and what it gets is A-law as the client sent it."""
    remote = fake_engines(["hello remote"], ["Remote says hi."], 50)
    async with peer_server(remote) as peer:
        taps = Taps(peer)
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": url}
        async with (
            peer_server(fake_engines(["never"], ["Never."]), **settings) as front,
            Caller(front.port, rate=8000, encode=g711.alaw_encode) as caller,  # type: ignore[arg-type]
        ):
            fmt = {"type": "audio/pcma"}
            audio = {"input": {"format": fmt}, "output": {"format": fmt}}
            await caller.send(
                {"type": "session.update", "session": {"type": "realtime", "audio": audio}}
            )
            await caller.wait_for(lambda: caller.of("session.updated"), WITHIN, "the update")
            caller.say(tone(0.8, 8000))
            (done,) = await caller.wait_for(caller.response_done, WITHIN, "the relayed reply")
            reply = caller.audio_of(done["response"]["id"], g711.alaw_decode)
    (session,) = taps.sessions
    assert session.settings.wire_format == "audio/pcma" and session.settings.output_rate == 8000
    got = [samples for rate, samples in taps.chunks if rate == 8000]
    # the client's 20 ms frames, on A-law's grid: neither resampled nor filtered on the way
    assert len(got) >= 0.8 / 0.02 and {len(s) for s in got} == {CHUNK}
    heard = np.concatenate(got)
    assert np.array_equal(g711.alaw_decode(g711.alaw_encode(heard)), heard)
    assert np.abs(heard).max() > 1000  # (the speech)
    assert [(i.role, i.text) for i in session.conversation.items][-1] == (
        "assistant",
        "Remote says hi.",
    )
    assert len(reply) >= 3 * 0.05 * 8000 and np.abs(reply).max() > 1000  # 3 words, at 8 kHz


# ---------------------------------------------------------------- SIP, on loopback


async def test_a_sip_calls_rtp_payloads_go_upstream_untouched() -> None:
    """A SIP phone that agreed on PCMU: the payloads of its RTP packets are what the upstream
    gets, byte for byte (μ-law's two zeros, 0x7F and 0xFF, included: a transcoding would merge
    them), and the upstream was set up in μ-law."""
    line = _line(0.6)
    chunks = [line[i : i + CHUNK] for i in range(0, len(line), CHUNK)]
    all_there = asyncio.Event()

    def script(event: dict[str, Any]) -> list[str]:
        if len(_appends(upstream.received)) >= len(chunks):
            all_there.set()
        return []

    async with ScriptedUpstream([CREATED], script) as upstream:
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": upstream.url}
        async with peer_server(fake_engines(["never"], ["Never."]), **settings) as front:
            assert front.sip is not None
            async with SipPeer(front.sip.port) as phone:
                phone.invite(payloads="0 101")
                ok = await phone.expect(200, WITHIN)
                phone.send(phone.request("ACK", cseq=1))
                await _rtp_line(phone, parse_offer(ok.body).port, chunks)
                async with asyncio.timeout(WITHIN):
                    await all_there.wait()
                phone.send(phone.request("BYE"))
                await phone.expect(200, WITHIN)
        (update,) = [e for e in upstream.received if e["type"] == "session.update"]
        assert update["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert _appends(upstream.received)[: len(chunks)] == chunks


async def _rtp_line(phone: SipPeer, port: int, chunks: list[bytes]) -> None:
    """The phone's microphone in real time: one 20 ms PCMU packet every 20 ms."""
    packets = Packetizer(0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, chunk in enumerate(chunks):
        phone.send_rtp(packets.packet(chunk).encode(), to_port=port)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))  # (pacing)
