"""Keys pressed by the agent's side: RFC 4733 events on the call's RTP.

The packets as bytes (one event's timestamp throughout, the marker on its first packet, the end
packet three times, the audio after it on the wall clock), sent by the real :class:`RtpMedia`
on loopback UDP and paced on a virtual clock; then the two ways in: ``POST
/v1/realtime/calls/{call_id}/dtmf`` (refused by name where it cannot work) and the
``press_keys`` tool, each ending in packets at a hand-driven SIP peer's RTP port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from pipeline.clock import VirtualClock
from pipeline.tools import ToolRegistry
from pipeline.tools.examples import press_keys, transfer_call
from transports.sip import dtmf, rtp, sdp
from transports.sip.media import MAX_QUEUED_EVENTS, RtpMedia
from transports.sip.message import SipError
from voice.calls import CallState
from voice.server import VoiceServer

from . import conftest
from .fakes import call, fake_engines, tone
from .sip.baresip import Baresip
from .sip.peer import Peer
from .test_sip_agent import established, say

pytestmark = [pytest.mark.e2e]
HOST = "127.0.0.1"
EVENT_PT = 101


class Wire(asyncio.DatagramProtocol):
    """The far end's RTP socket: every packet, parsed, in arrival order."""

    def __init__(self) -> None:
        self.packets: list[rtp.RtpPacket] = []
        self.changed = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append(rtp.RtpPacket.parse(data))
        self.changed.set()

    async def reach(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.packets) < n:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def media_to_wire(
    telephone_event: int | None = EVENT_PT, payload: int = 0
) -> AsyncIterator[tuple[RtpMedia, Wire, VirtualClock]]:
    loop = asyncio.get_running_loop()
    socket, wire = await loop.create_datagram_endpoint(Wire, local_addr=(HOST, 0))
    clock = VirtualClock()
    media = RtpMedia(
        sdp.Media(payload, telephone_event),
        socket.get_extra_info("sockname")[:2],
        on_audio=lambda _frame, _wire: None,
        on_dtmf=lambda _: None,
        on_sent=lambda _: None,
        clock=clock,
    )
    try:
        yield media, wire, clock
    finally:
        await media.close()
        socket.close()


async def ticks(media: RtpMedia, wire: Wire, clock: VirtualClock, n: int) -> None:
    """Let ``n`` more 20 ms ticks of the sender happen, and their packets arrive."""
    target = media.sent_packets + n
    while media.sent_packets < target:
        await clock.advance(0.02)
    await wire.reach(target)


async def test_keys_go_out_as_rfc4733_events_then_the_audio_resumes() -> None:
    async with media_to_wire() as (media, wire, clock):
        await media.open(HOST)
        await wire.reach(1)  # the first tick, at once: silence (the stream runs)
        media.play(np.full(320, 3000, np.int16))  # two frames of a reply, queued first …
        media.send_digits("1#")  # … the keys go before them
        await ticks(media, wire, clock, 16)

    silence, *rest = wire.packets[:17]
    events, audio = rest[:14], rest[14:]
    assert [p.payload_type for p in rest] == [EVENT_PT] * 14 + [0, 0]
    assert [p.sequence for p in wire.packets[:17]] == [
        (silence.sequence + i) & 0xFFFF for i in range(17)
    ]
    one, pound = events[:7], events[7:]
    # "1": four packets of growing duration, then the end packet (E bit, volume 10) three times
    assert [p.payload for p in one] == [
        bytes([1, 10, 0, 160]),
        bytes([1, 10, 320 >> 8, 320 & 0xFF]),
        bytes([1, 10, 480 >> 8, 480 & 0xFF]),
        bytes([1, 10, 640 >> 8, 640 & 0xFF]),
        *[bytes([1, 0x80 | 10, 800 >> 8, 800 & 0xFF])] * 3,
    ]
    assert [dtmf.Event.parse(p.payload).digit for p in pound] == ["#"] * 7
    assert pound[-1].payload == bytes([11, 0x8A, 800 >> 8, 800 & 0xFF])
    for event in (one, pound):
        assert len({p.timestamp for p in event}) == 1  # the event's start, throughout
        assert [p.marker for p in event] == [True] + [False] * 6
    # each event starts where the stream's time is: 7 ticks (140 ms) after the one before
    assert one[0].timestamp == (silence.timestamp + 160) & 0xFFFFFFFF
    assert pound[0].timestamp == (one[0].timestamp + 7 * 160) & 0xFFFFFFFF
    assert audio[0].timestamp == (pound[0].timestamp + 7 * 160) & 0xFFFFFFFF
    assert audio[1].timestamp == (audio[0].timestamp + 160) & 0xFFFFFFFF
    assert len(set(audio[0].payload)) == 1 and audio[0].payload != silence.payload
    detector = dtmf.Detector()
    heard = [detector.receive(p.timestamp, p.payload) for p in events]
    assert [d for d in heard if d is not None] == ["1", "#"]


async def test_keys_that_cannot_go_out_are_refused_and_nothing_is_queued() -> None:
    async with media_to_wire(telephone_event=None) as (media, _, _):
        with pytest.raises(SipError, match="telephone-event") as info:
            media.send_digits("1")
        assert info.value.code == "dtmf_not_negotiated"
    async with media_to_wire() as (media, _, _):
        for bad in ("", "12x", " 1", "1" * (dtmf.MAX_DIGITS + 1)):
            with pytest.raises(SipError) as info:
                media.send_digits(bad)
            assert info.value.code == "invalid_dtmf"
        assert not media.digits_pending
        per_digit = len(dtmf.packets("1"))
        full = MAX_QUEUED_EVENTS // (per_digit * dtmf.MAX_DIGITS)
        for _ in range(full):
            media.send_digits("1" * dtmf.MAX_DIGITS)
        with pytest.raises(SipError) as info:
            media.send_digits("1" * dtmf.MAX_DIGITS)
        assert info.value.code == "dtmf_busy"
        assert len(media._digits) == full * dtmf.MAX_DIGITS * per_digit


# ---------------------------------------------------------------- through the server


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(conftest.test_config(), fake_engines(["hello"], ["Hi, how can I help?"]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def post(server: VoiceServer, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{server.port}/v1/realtime/calls/{path}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status, (await response.json() if response.status != 200 else {})


async def keys_at(peer: Peer, n: int, within: float = 10.0) -> list[str]:
    """The first ``n`` keys the peer's RTP port receives (RFC 4733, reported once each)."""
    detector, keys = dtmf.Detector(), []
    async with asyncio.timeout(within):
        while len(keys) < n:
            data, _ = await peer.rtp_queue.get()
            packet = rtp.RtpPacket.parse(data)
            if packet.payload_type == EVENT_PT:
                key = detector.receive(packet.timestamp, packet.payload)
                if key is not None:
                    keys.append(key)
    return keys


def sip_call_id(server: VoiceServer) -> str:
    (handle,) = [c for c in server.call_control.registry if c.transport == "sip"]
    assert handle.state is CallState.ACTIVE
    return handle.call_id


async def test_the_api_presses_keys_on_a_sip_call(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(phone_server.sip.port) as peer:
        await established(peer)
        call_id = sip_call_id(phone_server)
        assert await post(phone_server, f"{call_id}/dtmf", {"digits": "9*0#"}) == (200, {})
        assert await post(phone_server, f"{call_id}/dtmf", {"digits": "D"}) == (200, {})
        assert await keys_at(peer, 5) == ["9", "*", "0", "#", "D"]

        for body, param in [
            ({"digits": "12x"}, "digits"),
            ({"digits": ""}, "digits"),
            ({"digits": 5}, "digits"),
            ({"digits": "1" * 33}, "digits"),
            ({"digits": "1", "duration_ms": 80}, "duration_ms"),
        ]:
            status, error = await post(phone_server, f"{call_id}/dtmf", body)
            assert status == 400 and error["error"]["param"] == param, (body, error)
        status, error = await post(phone_server, f"{call_id}/dtmf", {"digits": "12x"})
        assert "0-9, *, #, A-D" in error["error"]["message"]
        status, error = await post(phone_server, "sip_nosuchcall/dtmf", {"digits": "1"})
        assert status == 404 and error["error"]["code"] == "call_not_found"


async def test_a_phone_without_telephone_event_gets_409(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(phone_server.sip.port) as peer:
        peer.invite(payloads="0")
        await peer.expect(200)
        peer.send(peer.request("ACK", cseq=1))
        peer.send(peer.request("OPTIONS"))
        await peer.expect(200)
        status, error = await post(
            phone_server, f"{sip_call_id(phone_server)}/dtmf", {"digits": "1"}
        )
        assert status == 409 and error["error"]["code"] == "dtmf_not_negotiated", error


async def test_a_twilio_call_cannot_send_keys(phone_server: VoiceServer) -> None:
    from .test_e2e_twilio import FakeTwilio  # (the Twilio side of a media stream)

    async with FakeTwilio(phone_server.port) as twilio:
        await twilio.start()
        # a key from the caller, answered by the agent: the stream has started, the call is live
        await twilio.send({"event": "dtmf", "streamSid": "MZtest", "dtmf": {"digit": "#"}})
        await twilio.wait_for(lambda: twilio.of("media"), 20, "the agent's answer")
        (handle,) = [c for c in phone_server.call_control.registry if c.transport == "twilio"]
        status, error = await post(phone_server, f"{handle.call_id}/dtmf", {"digits": "1"})
    assert status == 409 and error["error"]["code"] == "dtmf_not_supported"
    assert "Twilio Media Streams cannot send keypad tones" in error["error"]["message"]


async def test_the_model_presses_keys_with_its_tool() -> None:
    """An outbound-style IVR: the model calls ``press_keys``; the keys reach the phone's RTP
    port, and the tool is offered on SIP calls only."""
    engines = fake_engines(["press one for sales"], ["One moment."])
    engines.llm.replies = [call("press_keys", '{"keys": "1 2#"}'), "Done."]  # type: ignore[attr-defined]
    tools = ToolRegistry([press_keys, transfer_call])
    assert [s.name for s in tools.specs(set())] == ["transfer_call"]  # no keypad: not offered
    server = VoiceServer(conftest.test_config(), engines, tools=tools)
    await server.start("127.0.0.1", 0)
    try:
        async with Peer(server.sip.port if server.sip else 0) as peer:
            media_port = await established(peer)
            line = asyncio.create_task(say(peer, media_port))  # the menu speaks
            try:
                assert await keys_at(peer, 3, within=30) == ["1", "2", "#"]
            finally:
                line.cancel()
            options = engines.llm.options[0]  # type: ignore[attr-defined]
            assert "press_keys" in [t.name for t in options.tools]
            peer.send(peer.request("BYE"))
            await peer.expect(200)
        (session_id,) = set(server.ended) | set(server.sessions)
        record = await server.wait_ended(session_id)
        items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
        outputs = [i["text"] for i in items if i.get("type") == "function_call_output"]
        assert outputs == ["Pressed 1 2 # on the keypad."], items
    finally:
        await server.stop()


async def test_baresip_hears_the_keys_in_order(phone_server: VoiceServer, tmp_path: Path) -> None:
    """A real softphone: baresip calls the server, the API presses keys, and baresip reports
    each one (``CALL_DTMF_START`` with the key, then ``CALL_DTMF_END``) in the order sent."""
    agent = phone_server.sip
    assert agent is not None
    keys = "159#*0"
    async with Baresip(tmp_path, tone(3.0, 8000)) as phone:
        await phone.dial(f"sip:agent@127.0.0.1:{agent.port}")
        await phone.wait_event("CALL_ESTABLISHED", within=20)
        call_id = sip_call_id(phone_server)
        assert await post(phone_server, f"{call_id}/dtmf", {"digits": keys[:3]}) == (200, {})
        assert await post(phone_server, f"{call_id}/dtmf", {"digits": keys[3:]}) == (200, {})

        def pressed() -> list[dict[str, Any]]:
            return [e for e in phone.events if e.get("type", "").startswith("CALL_DTMF")]

        await phone.wait_for(lambda: len(pressed()) >= 2 * len(keys), 20, "the keys")
        await phone.command("hangup")
        await phone.wait_event("CALL_CLOSED", within=20)
    starts = [e["param"] for e in pressed() if e["type"] == "CALL_DTMF_START"]
    assert starts == list(keys), pressed()
    assert [e["type"] for e in pressed()] == ["CALL_DTMF_START", "CALL_DTMF_END"] * len(keys)
