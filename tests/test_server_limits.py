"""Server-wide limits with fake engines (fast, no models): WebRTC offers that never connect have
their own budget and do not take the sessions of WebSocket clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from voice.health import refusal
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines

SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
async def light_server() -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.server.max_sessions = 2
    config.webrtc.max_pending_calls = 3
    config.webrtc.connect_timeout = 300.0  # far beyond the test: only the budget ends a call
    server = VoiceServer(config, fake_engines(["hi"], ["Hello."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def unconnectable_offer() -> str:
    """A real aiortc offer without ICE candidates (nor end-of-candidates): the server answers
    it and then waits for candidates that never come, as for a peer that never shows up."""
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = sdp.split("\r\n")
    return "\r\n".join(x for x in lines if not x.startswith(("a=candidate", "a=end-of-cand")))


async def post_offer(http: aiohttp.ClientSession, port: int, sdp: str) -> tuple[int, str]:
    async with http.post(f"http://127.0.0.1:{port}/v1/realtime/calls", data=sdp, headers=SDP) as r:
        return r.status, await r.text()


async def test_offers_that_never_connect_do_not_take_sessions(light_server: VoiceServer) -> None:
    port = light_server.port
    assert port is not None
    offer = await unconnectable_offer()
    async with aiohttp.ClientSession() as http:
        statuses = [(await post_offer(http, port, offer))[0] for _ in range(3)]
        assert statuses == [201, 201, 201]
        assert len(light_server.calls) == 3 and not light_server.sessions

        status, body = await post_offer(http, port, offer)  # past webrtc.max_pending_calls
        assert status == 503 and "too many calls connecting" in body

        async with (
            websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as first,
            websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as second,
        ):
            for ws in (first, second):
                assert '"session.created"' in str(await ws.recv())
            assert len(light_server.sessions) == 2  # max_sessions, beside 3 connecting calls
            session_ids = list(light_server.sessions)
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime"):
                    pass
            assert refused.value.response.status_code == 503
            status, body = await post_offer(http, port, offer)  # no session for it either
            assert status == 503 and "limit of 2 sessions" in body
        async with asyncio.timeout(10):
            for session_id in session_ids:
                await light_server.wait_ended(session_id)

        call = next(iter(light_server.calls.values()))
        await call.close("test hangs up")
        assert len(light_server.calls) == 2
        assert (await post_offer(http, port, offer))[0] == 201  # a connecting slot is free again


async def test_a_closing_session_no_longer_takes_a_place(light_server: VoiceServer) -> None:
    port = light_server.port
    async with (
        websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as first,
        websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as second,
    ):
        for ws in (first, second):
            assert '"session.created"' in str(await ws.recv())
        assert refusal(light_server.admission()) is not None  # at max_sessions (2)
        closing = next(iter(light_server.sessions.values()))
        closing.close("the caller hung up")  # (still listed until its tasks have ended)
        assert closing.id in light_server.sessions
        assert refusal(light_server.admission()) is None
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as third:
            assert '"session.created"' in str(await third.recv())


async def test_a_call_becomes_a_session_when_it_connects_unless_none_is_free(
    light_server: VoiceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = light_server.port
    assert port is not None
    offer = await unconnectable_offer()
    async with aiohttp.ClientSession() as http:
        assert [(await post_offer(http, port, offer))[0] for _ in range(2)] == [201, 201]
    early, late = light_server.calls.values()
    with monkeypatch.context() as patch:  # as if ICE and DTLS had come up
        patch.setattr(RTCPeerConnection, "connectionState", property(lambda pc: "connected"))
        await early._on_state()
        assert early.connected and list(light_server.sessions) == [early.session.id]
        light_server.config.server.max_sessions = 1
        await late._on_state()
    assert late.session.closed_reason == "server is at its limit of 1 sessions"
    assert list(light_server.calls) == [early.id]
    assert list(light_server.sessions) == [early.session.id]


async def test_a_bad_offer_is_refused_before_any_session_exists(light_server: VoiceServer) -> None:
    port = light_server.port
    assert port is not None
    async with aiohttp.ClientSession() as http:
        status, body = await post_offer(http, port, "v=0\r\nthis is not an offer\r\n")
    assert status == 400 and ("invalid_sdp" in body or "no_audio" in body), body
    assert not light_server.calls and not light_server.sessions and not light_server.ended
