"""Blind transfer with a real softphone as the transferee: baresip calls the server (fake
engines), the agent REFERs it to a desk, and baresip itself INVITEs the desk (RFC 3515) while
the agent's call ends with BYE. The desk is a hand-driven SIP peer on loopback."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from transports.sip.message import uri_of
from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines, tone
from .sip.baresip import Baresip
from .sip.peer import Peer

pytestmark = [pytest.mark.e2e]


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(conftest.test_config(), fake_engines(["hello"], ["Hi, how can I help?"]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_baresip_follows_a_blind_transfer(phone_server: VoiceServer, tmp_path: Path) -> None:
    agent = phone_server.sip
    assert agent is not None
    async with Baresip(tmp_path, tone(3.0, 8000)) as phone, Peer(phone.sip_port) as desk:
        await phone.dial(f"sip:agent@127.0.0.1:{agent.port}")
        await phone.wait_event("CALL_ESTABLISHED", within=20)
        (inbound,) = agent.dialogs.values()
        assert inbound.call is not None
        session = inbound.call.session
        target = f"sip:desk@127.0.0.1:{desk.port}"

        assert 200 <= await inbound.refer(target) < 300  # baresip accepts the REFER (202)

        invite = await desk.expect_request("INVITE", within=20)  # baresip calls the desk
        assert uri_of(invite.uri) == target
        assert invite.call_id != inbound.call_id  # a call of its own, not the agent's
        desk.answer(invite, 486)  # (the desk is busy: baresip's new call ends there)
        record = await phone_server.wait_ended(session.id)
        assert record["closed_reason"] == f"transferred to {target}"
        closed = await phone.wait_event("CALL_CLOSED", within=20)  # the agent's BYE, or the 486
        assert closed["param"]


async def test_baresip_starts_again_when_its_port_was_taken(tmp_path: Path) -> None:
    phone = Baresip(tmp_path, tone(1.0, 8000))
    taken = phone.sip_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", taken))  # (another process got there between the two)
        async with phone:
            assert phone.sip_port != taken
            assert any("Address already in use" in line for line in phone.output)
            await phone.command("reginfo")
            await phone.wait_for(lambda: phone.responses, 10, "an answer on its control socket")
