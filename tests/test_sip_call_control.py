"""SIP calls under OpenAI-style call control: the ``realtime.call.incoming`` webhook gets the
INVITE's headers, and the call rings until ``/accept`` (with a session configuration) or
``/reject`` (its status goes to the caller). The webhook receiver is a real HTTP server on
loopback; the caller a hand-driven SIP peer; the engines the fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines
from .sip.peer import Peer

pytestmark = [pytest.mark.e2e]


class Receiver:
    """The webhook's receiver: keeps each event, answers 200."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        await self.events.put(await request.json())
        return web.Response()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


@pytest.fixture
async def phone_server(receiver: Receiver) -> AsyncIterator[VoiceServer]:
    config = conftest.test_config()
    config.calls.webhook_url = receiver.url
    server = VoiceServer(config, fake_engines(["hi"], ["Hello."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def control(server: VoiceServer, call_id: str, action: str, body: dict[str, Any]) -> int:
    url = f"http://127.0.0.1:{server.port}/v1/realtime/calls/{call_id}/{action}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body) as response:
        return response.status


async def test_the_webhook_decides_accept(phone_server: VoiceServer, receiver: Receiver) -> None:
    assert phone_server.sip is not None
    async with Peer(phone_server.sip.port) as peer:
        peer.invite()
        await peer.expect(180)
        async with asyncio.timeout(10):
            event = await receiver.events.get()
        assert event["type"] == "realtime.call.incoming"
        headers = {h["name"]: h["value"] for h in event["data"]["sip_headers"]}
        assert headers["Call-ID"] == peer.call_id and "INVITE" in headers["CSeq"]
        call_id = event["data"]["call_id"]
        assert not phone_server.sessions  # ringing: no session yet
        accept = {"type": "realtime", "instructions": "You are the night desk."}
        assert await control(phone_server, call_id, "accept", accept) == 200
        await peer.expect(200)
        peer.send(peer.request("ACK", cseq=1))
        (session,) = phone_server.sessions.values()
        assert session.settings.instructions == "You are the night desk."
        assert await control(phone_server, call_id, "accept", accept) == 409  # not incoming
        assert await control(phone_server, call_id, "hangup", {}) == 200
        bye = await peer.expect_request("BYE")
        peer.answer(bye)


async def test_the_webhook_decides_reject(phone_server: VoiceServer, receiver: Receiver) -> None:
    assert phone_server.sip is not None
    async with Peer(phone_server.sip.port) as peer:
        peer.invite()
        async with asyncio.timeout(10):
            event = await receiver.events.get()
        call_id = event["data"]["call_id"]
        assert await control(phone_server, call_id, "reject", {"status_code": 486}) == 200
        await peer.expect(486)
        peer.send(peer.request("ACK", branch=peer.invite_branch, cseq=1))
        assert await control(phone_server, call_id, "accept", {"type": "realtime"}) in (404, 409)
    assert not phone_server.sessions
