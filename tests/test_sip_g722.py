"""G.722 (wide-band, 16 kHz) on SIP calls: the codec with bytes, the RTP side on loopback on a
virtual clock, and a real call from baresip offering G.722 — the agent hears the caller at
16 kHz and the phone hears the agent's voice with what lies above G.711's 4 kHz."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import G722
import numpy as np
import pytest

from pipeline import messages as m
from pipeline.audio import resample
from pipeline.engines import Engines
from transports.sip import codec, rtp, sdp
from voice.server import VoiceServer

from .conftest import espeak
from .sip.baresip import Baresip
from .test_engines import wer
from .test_sip_baresip import PHONE_QUESTION, TURN_TIMEOUT, Watch, answered_session
from .test_sip_dtmf_out import HOST, media_to_wire, ticks


def tone(hz: float, n: int, rate: int = 16000, level: float = 6000) -> np.ndarray:
    return (np.sin(2 * np.pi * hz * np.arange(n) / rate) * level).astype(np.int16)


def band_share(audio: np.ndarray, rate: int, low: float, high: float) -> float:
    """The share of ``audio``'s energy between ``low`` and ``high`` Hz."""
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum() / spectrum.sum())


def test_g722_frames_round_trip_with_the_upper_band() -> None:
    coder = codec.G722.coder()
    signal = tone(500, 16000) // 2 + tone(6000, 16000) // 2  # 1 s: a low and a high tone
    frames = [signal[i : i + 320] for i in range(0, len(signal), 320)]
    payloads = [coder.encode(f) for f in frames]
    assert {len(p) for p in payloads} == {160}  # 64 kbit/s: 160 bytes per 20 ms
    decoded = np.concatenate([coder.decode(p) for p in payloads])
    assert decoded.dtype == np.int16 and len(decoded) == len(signal)
    settled = decoded[1600:]  # (ADPCM adapts over the first frames)
    assert band_share(settled, 16000, 5500, 6500) > 0.3  # the 6 kHz tone came through
    assert band_share(settled, 16000, 400, 600) > 0.3
    # each direction keeps its own state: a second decoder of the same bytes agrees
    other = codec.G722.coder()
    again = np.concatenate([other.decode(p) for p in payloads])
    assert np.array_equal(again, decoded)


def test_g722_in_sdp() -> None:
    offer = sdp.parse_offer(
        b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 9 0 101\r\n"
        b"a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    media = sdp.choose(offer)
    assert (media.codec, media.format.rate, media.format.frame_samples) == ("G722", 16000, 320)
    answer = sdp.answer(offer, media, HOST, 40000, 1).decode()
    assert "m=audio 40000 RTP/AVP 9 101\r\n" in answer and "a=rtpmap:9 G722/8000" in answer
    ours = sdp.choose(sdp.parse_offer(sdp.offer(HOST, 40000, 1)))
    assert ours.codec == "G722"  # our own offer puts wide-band first
    # a G.722 peer that asks for a rate other than the RTP clock's 8000 is not understood
    odd = sdp.parse_offer(
        b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 9 0\r\na=rtpmap:9 G722/16000\r\n"
    )
    assert sdp.choose(odd).codec == "PCMU"


@pytest.mark.e2e
async def test_g722_rtp_both_ways() -> None:
    """Out: 20 ms of 16 kHz audio per packet, 160 bytes, the timestamp moving by 160 (the
    8 kHz RTP clock). In: the phone's G.722 packets come out as 320-sample frames."""
    frames_in: list[np.ndarray] = []
    three_in = asyncio.Event()

    def heard_in(frame: np.ndarray, _wire: bytes | None) -> None:
        frames_in.append(frame)
        if len(frames_in) == 3:
            three_in.set()

    async with media_to_wire(payload=9) as (media, wire, clock):
        media.on_audio = heard_in
        assert media.rate == 16000
        await media.open(HOST)
        await wire.reach(1)
        reply = tone(1000, 3 * 320)
        media.play(reply)
        await ticks(media, wire, clock, 3)

        loop = asyncio.get_running_loop()
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0)
        )
        phone, encoder = rtp.Packetizer(9), codec.G722.coder()
        for _ in range(3):
            payload = encoder.encode(tone(1500, 320))
            sender.sendto(phone.packet(payload).encode(), (HOST, media.port))
        async with asyncio.timeout(10):
            await three_in.wait()
        sender.close()

    packets = wire.packets[:4]
    assert [p.payload_type for p in packets] == [9] * 4
    assert [len(p.payload) for p in packets] == [160] * 4
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(packets)]
    assert steps == [160] * 3
    heard = np.concatenate(
        [np.frombuffer(G722.G722(16000, 64000).decode(p.payload), np.int16) for p in packets[1:]]
    )
    assert band_share(heard[320:], 16000, 900, 1100) > 0.5  # the reply's tone, at 16 kHz
    assert [len(f) for f in frames_in] == [320] * 3


@pytest.mark.e2e
@pytest.mark.models
async def test_a_g722_call_from_baresip(
    server: VoiceServer, engines: Engines, tmp_path: Path
) -> None:
    agent = server.sip
    assert agent is not None
    before = set(server.sessions)
    line = np.concatenate(
        [
            np.zeros(8000, np.int16),
            espeak(PHONE_QUESTION, rate=16000, voice="en-us", wpm=140),
            np.zeros(16000 * 60, np.int16),
        ]
    )
    async with Baresip(tmp_path, line, codecs="G722/16000/1,PCMU", rate=16000) as phone:
        await phone.dial(f"sip:agent@127.0.0.1:{agent.port}")
        established = await phone.wait_event("CALL_ESTABLISHED", 20)
        inbound = agent.dialogs[established["id"]]
        assert inbound.media.codec == "G722"
        session = await answered_session(server, before)
        assert session.settings.output_rate == 16000
        watch = Watch(session)
        await watch.until(lambda _: watch.replies_done(), TURN_TIMEOUT, "the agent's reply")
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED", 20)
    async with asyncio.timeout(30):
        record = await server.wait_ended(session.id)

    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    user = [i for i in items if i["role"] == "user"]
    assistant = [i for i in items if i["role"] == "assistant"]
    assert wer(PHONE_QUESTION, user[0]["text"]) <= 0.2, user[0]["text"]
    first_reply = assistant[0]["text"]
    assert assistant[0]["status"] == "completed" and first_reply.strip()

    (done, *_) = watch.replies_done()
    sent = np.concatenate(
        [
            resample(e.audio, e.rate, 16000)
            for e in watch.events
            if isinstance(e, m.ReplyAudio) and e.response_id == done.response_id
        ]
    )
    heard, rate = phone.recording()
    assert rate == 16000 and np.abs(heard).max() > 1000
    loud = np.flatnonzero(np.abs(heard) > 300)
    first = heard[max(0, loud[0] - 1600) : loud[0] + len(sent)]
    # wide-band: what the phone heard keeps the agent's voice above 4 kHz, in about the share
    # the voice has there (through G.711 it would be next to nothing)
    upper_sent, upper_heard = (
        band_share(sent, 16000, 4200, 7500),
        band_share(first, 16000, 4200, 7500),
    )
    assert upper_sent > 1e-4 and upper_heard > 0.3 * upper_sent, (upper_sent, upper_heard)
    text = await engines.asr.transcribe(first)
    assert wer(first_reply, text) <= 0.5, (first_reply, text)
