"""The SIP agent against sipp (Debian ``sip-tester``) on loopback: a G.711 A-law call with RFC
4733 DTMF played from sipp's own captures, and a scenario of malformed, out-of-dialog and
retransmitted requests, each answered as RFC 3261 asks.

These test the protocol, so the server runs the fake engines (``tests/fakes.py``): a loud
window is speech, the transcript and the reply are scripted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines
from .sip.sipp import sipp

pytestmark = [pytest.mark.e2e]


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(
        conftest.test_config(),
        fake_engines(["I would like to book a table."], ["Of course, for when?"]),
    )
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


def target(server: VoiceServer) -> str:
    assert server.sip is not None
    return f"127.0.0.1:{server.sip.port}"


async def the_session(server: VoiceServer) -> dict[str, object]:
    """The record of the one session a scenario opened (this server's only), once it ends."""
    (session_id,) = set(server.ended) | set(server.sessions)
    async with asyncio.timeout(30):
        return await server.wait_ended(session_id)


async def test_a_pcma_call_with_rfc4733_dtmf(phone_server: VoiceServer, tmp_path: Path) -> None:
    run = await sipp(tmp_path, target(phone_server), "-s", "agent", scenario="pcma_dtmf.xml")
    assert run.returncode == 0, run.explain()
    record = await the_session(phone_server)
    assert record["closed_reason"] == "the caller hung up (BYE)"
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    texts = [(i["role"], i["text"]) for i in items]
    # sipp's A-law speech was heard as speech (a turn, answered: the capture speaks on after a
    # pause, which may cut the reply off), the digit reached the session
    assert ("user", "I would like to book a table.") in texts, texts
    replies = [text for role, text in texts if role == "assistant"]
    assert replies and all(r and "Of course, for when?".startswith(r) for r in replies), texts
    assert any(role == "user" and "1" in text.split() for role, text in texts), texts
    # the 200 OK answered A-law, with telephone-event
    assert "RTP/AVP 8 101" in run.messages, run.explain()


async def test_bad_input_gets_the_right_responses(
    phone_server: VoiceServer, tmp_path: Path
) -> None:
    run = await sipp(tmp_path, target(phone_server), "-s", "agent", scenario="bad_input.xml")
    assert run.returncode == 0, run.explain()
    record = await the_session(phone_server)  # the retransmitted INVITE made one session
    assert record["closed_reason"] == "the caller hung up (BYE)"
    assert phone_server.sip is not None and not phone_server.sip.dialogs
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    assert any(i["role"] == "user" and "#" in i["text"].split() for i in items), items  # INFO


async def test_digest_authenticated_call(tmp_path: Path) -> None:
    config = conftest.test_config()
    config.sip.auth_users = "alice:wonder1and"
    server = VoiceServer(config, fake_engines(["hi"], ["Hello."]))
    await server.start("127.0.0.1", 0)
    try:
        run = await sipp(
            tmp_path,
            target(server),
            "-s",
            "agent",
            "-au",
            "alice",
            "-ap",
            "wonder1and",
            scenario="auth_invite.xml",
        )
        assert run.returncode == 0, run.explain()
        assert 'WWW-Authenticate: Digest realm="voice"' in run.messages
        record = await the_session(server)  # one session: the challenged INVITE made none
        assert record["closed_reason"] == "the caller hung up (BYE)"
    finally:
        await server.stop()


async def test_over_tcp(phone_server: VoiceServer, tmp_path: Path) -> None:
    """sipp on TCP (``-t t1``): OPTIONS, an unknown method, a SIP/3.0 request (505, and the
    connection goes on), a call, then a request with no Content-Length: 400, and the connection
    closed."""
    run = await sipp(tmp_path, target(phone_server), "-t", "t1", "-s", "agent", scenario="tcp.xml")
    assert run.returncode == 0, run.explain()
    record = await the_session(phone_server)
    assert record["closed_reason"] == "the caller hung up (BYE)"
    assert "SIP/2.0/TCP" in run.messages and "SIP/2.0/UDP" not in run.messages, run.explain()
    assert f"sip:agent@{target(phone_server)};transport=tcp" in run.messages
    assert "SIP/2.0 400 Bad Request (no Content-Length on a stream" in run.messages
    assert phone_server.sip is not None and phone_server.sip.malformed == 2
    assert phone_server.sip.tcp is not None and not phone_server.sip.tcp.connections
