"""Twilio calls while the server takes no new session (``server.max_sessions`` reached, the
call registry full, draining): the voice webhook answers ``<Reject reason="busy"/>`` instead of
connecting a stream that would be refused, and a media stream that arrives anyway is closed at
once with 1013 and the reason, no session opened. Below the limit, both work again. The fake
engines; Twilio's side is a plain WebSocket client."""

from __future__ import annotations

import asyncio
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import aiohttp
import pytest
import websockets

from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines

FORM = {"CallSid": "CA123", "AccountSid": "AC9", "From": "+15550100", "To": "+15550199"}


@pytest.fixture
async def server() -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.server.max_sessions = 1
    server = VoiceServer(config, fake_engines(["unused"], ["Hi."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def webhook(server: VoiceServer) -> ET.Element:
    """POST the call's form to the voice webhook; the TwiML's root."""
    url = f"http://127.0.0.1:{server.port}/v1/twilio/voice"
    async with aiohttp.ClientSession() as http, http.post(url, data=FORM) as response:
        assert response.status == 200 and response.content_type == "text/xml"
        root = ET.fromstring(await response.text())
    assert root.tag == "Response"
    return root


def verbs(root: ET.Element) -> list[tuple[str, dict[str, str]]]:
    return [(verb.tag, dict(verb.attrib)) for verb in root]


async def refused_count(server: VoiceServer, reason: str) -> float:
    url = f"http://127.0.0.1:{server.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    prefix = f'voice_sessions_refused_total{{reason="{reason}"}} '
    values = [
        float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix)
    ]
    return values[0] if values else 0.0


def stream_url(server: VoiceServer) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/twilio/media-stream"


async def started_stream(server: VoiceServer) -> websockets.ClientConnection:
    """A media stream that has sent ``connected`` and ``start``: its session is open."""
    ws = await websockets.connect(stream_url(server))
    await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start = {
        "accountSid": "AC9",
        "streamSid": "MZ1",
        "callSid": "CA123",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {},
    }
    await ws.send(json.dumps({"event": "start", "streamSid": "MZ1", "start": start}))
    return ws


async def test_the_webhook_rejects_as_busy_at_capacity(server: VoiceServer) -> None:
    ((verb, _),) = verbs(await webhook(server))
    assert verb == "Connect"  # below the limit: the stream
    server.config.server.max_sessions = 0
    before = await refused_count(server, "capacity")
    assert verbs(await webhook(server)) == [("Reject", {"reason": "busy"})]
    assert await refused_count(server, "capacity") == before + 1
    server.config.server.max_sessions = 1  # room again
    ((verb, _),) = verbs(await webhook(server))
    assert verb == "Connect"


async def test_the_webhook_rejects_while_draining_or_the_registry_is_full(
    server: VoiceServer,
) -> None:
    server.draining = True
    assert verbs(await webhook(server)) == [("Reject", {"reason": "busy"})]
    assert await refused_count(server, "draining") == 1
    server.draining = False
    server.call_control.registry.max_calls = 0
    assert verbs(await webhook(server)) == [("Reject", {"reason": "busy"})]


async def test_a_stream_at_capacity_is_closed_with_the_reason(server: VoiceServer) -> None:
    server.config.server.max_sessions = 0
    async with websockets.connect(stream_url(server)) as ws:
        async with asyncio.timeout(10):
            await ws.wait_closed()
    assert ws.close_code == 1013
    assert ws.close_reason == "server is at its limit of 0 sessions"
    assert not server.sessions and not server.ended  # no session was opened
    assert await refused_count(server, "capacity") == 1
    server.config.server.max_sessions = 1  # room again: a stream is taken, and ends as usual
    ws = await started_stream(server)
    await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
    async with asyncio.timeout(10):
        await ws.wait_closed()
    assert ws.close_code == 1000
    assert len(server.ended) == 1
