"""The SIP agent's timers and corner cases, against a hand-driven peer on loopback (the bytes of
each request written by the test) and the fake engines: the 200 retransmitted until its ACK,
CANCEL while ringing, 486 at capacity, RTP from a stranger and garbage, our BYE, our REFER."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import numpy as np
import pytest

from pipeline.tools import ToolRegistry
from pipeline.tools.examples import transfer_call
from transports import g711
from transports.sip import digest
from transports.sip.rtp import Packetizer
from transports.sip.sdp import parse_offer
from voice.server import VoiceServer

from . import conftest
from .fakes import call, fake_engines, silence, tone
from .sip.peer import Peer

pytestmark = [pytest.mark.e2e]


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = VoiceServer(
        conftest.test_config(), fake_engines(["hello there"], ["Hi, how can I help?"])
    )
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


def agent_port(server: VoiceServer) -> int:
    assert server.sip is not None
    return server.sip.port


async def established(peer: Peer) -> int:
    """INVITE → 100, 180, 200 (with the agent's RTP port) → ACK; returns that port."""
    peer.invite()
    await peer.expect(100)
    await peer.expect(180)
    ok = await peer.expect(200)
    peer.send(peer.request("ACK", cseq=1))
    peer.send(peer.request("OPTIONS"))  # a round trip: the ACK has been taken when it returns
    await peer.expect(200)
    return parse_offer(ok.body).port


async def test_200_is_retransmitted_until_the_ack(phone_server: VoiceServer) -> None:
    async with Peer(agent_port(phone_server)) as peer:
        peer.invite()
        await peer.expect(180)
        times = []
        for _ in range(3):  # the 200 and two retransmissions (no ACK yet)
            await peer.expect(200)
            times.append(asyncio.get_running_loop().time())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 0.4 <= gaps[0] <= 0.8 and 0.8 <= gaps[1] <= 1.4, gaps  # T1, then 2*T1
        peer.send(peer.request("ACK", cseq=1))
        peer.send(peer.request("OPTIONS"))  # (after the ACK on the same socket: processed after it)
        options = await peer.expect(200)
        assert options.cseq[1] == "OPTIONS" and "INVITE" in (options.get("Allow") or "")
        assert phone_server.sip is not None
        (inbound,) = phone_server.sip.dialogs.values()
        assert inbound.ok is not None and inbound.ok.stopped
        assert inbound.dialog.state.value == "confirmed"
        peer.send(peer.request("BYE"))
        assert (await peer.expect(200)).cseq[1] == "BYE"


async def test_cancel_while_ringing(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    phone_server.sip.options.ring_ms = 10_000
    async with Peer(agent_port(phone_server)) as peer:
        invite = peer.invite()
        await peer.expect(180)
        cancel = peer.request("CANCEL", branch=peer.invite_branch, cseq=1)
        peer.send(cancel)
        cancelled = [await peer.expect(200, within=5), await peer.expect(487, within=5)]
        assert [r.cseq[1] for r in cancelled] == ["CANCEL", "INVITE"]
        peer.send(peer.request("ACK", branch=peer.invite_branch, cseq=1))
        peer.send(invite)  # a late retransmission of the INVITE: the same 487 again
        assert (await peer.expect(487)).cseq[1] == "INVITE"
    assert not phone_server.sip.dialogs and not phone_server.sessions


async def test_busy_at_capacity(phone_server: VoiceServer) -> None:
    phone_server.config.server.max_sessions = 0
    async with Peer(agent_port(phone_server)) as peer:
        peer.invite()
        busy = await peer.expect(486)
        assert busy.to_tag  # a final answer carries the To tag its ACK will repeat
        peer.send(peer.request("ACK", branch=peer.invite_branch, cseq=1))
    assert phone_server.sip is not None and not phone_server.sip.dialogs


async def test_stranger_and_garbage_rtp_are_ignored(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(agent_port(phone_server)) as peer:
        media_port = await established(peer)
        (inbound,) = phone_server.sip.dialogs.values()
        assert inbound.call is not None
        media = inbound.call.media
        read = asyncio.Queue[int]()
        take = media.received

        def counted(data: bytes, addr: tuple[str, int]) -> None:  # (sees each datagram read)
            take(data, addr)
            read.put_nowait(len(data))

        media.received = counted  # type: ignore[method-assign]
        packetizer = Packetizer(0)
        loud = g711.ulaw_encode(tone(0.02, rate=8000))
        peer.send_rtp(packetizer.packet(loud).encode(), to_port=media_port)  # latches
        # a stranger (another port), garbage, a payload type nobody offered, RTCP
        peer.send_rtp(packetizer.packet(loud).encode(), to_port=media_port, from_other=True)
        peer.send_rtp(b"\x00garbage\xff" * 4, to_port=media_port)
        peer.send_rtp(Packetizer(18).packet(b"\x01" * 20).encode(), to_port=media_port)
        peer.send_rtp(bytes([0x81, 201]) + b"\x00" * 30, to_port=media_port)
        async with asyncio.timeout(5):
            for _ in range(5):
                await read.get()
        # the agent's RTP reaches the peer's RTP port (symmetric), 20 ms of PCMU each
        async with asyncio.timeout(5):
            data, _ = await peer.rtp_queue.get()
        assert len(data) == 12 + 160 and data[1] & 0x7F == 0
        receiver = media.receiver
        assert (receiver.foreign, receiver.malformed, receiver.rtcp) == (1, 2, 1)
        assert media.last_received is not None
        peer.send(peer.request("BYE"))
        await peer.expect(200)


async def test_the_agent_hangs_up_with_bye(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(agent_port(phone_server)) as peer:
        await established(peer)
        (inbound,) = phone_server.sip.dialogs.values()
        inbound.hangup("done talking")
        bye = await peer.expect_request("BYE")
        assert bye.call_id == peer.call_id and bye.to_tag == peer.tag
        assert "done talking" in (bye.get("Reason") or "")
        peer.answer(bye)
        session = inbound.call.session if inbound.call else None
    assert session is not None
    record = await phone_server.wait_ended(session.id)
    assert record["closed_reason"] == "done talking"


async def test_refer_transfers_and_hangs_up(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(agent_port(phone_server)) as peer:
        await established(peer)
        (inbound,) = phone_server.sip.dialogs.values()
        transfer = asyncio.create_task(inbound.refer("sip:desk@127.0.0.1:5999"))
        refer = await peer.expect_request("REFER")
        assert refer.get("Refer-To") == "<sip:desk@127.0.0.1:5999>"
        peer.answer(refer, 202)
        assert await transfer == 202
        bye = await peer.expect_request("BYE")
        peer.answer(bye)


async def test_requests_for_no_dialog_and_unknown_methods(phone_server: VoiceServer) -> None:
    async with Peer(agent_port(phone_server)) as peer:
        peer.to_tag = "nosuchtag"
        peer.send(peer.request("BYE"))
        assert (await peer.expect(481)).cseq[1] == "BYE"
        peer.send(peer.request("INFO"))
        await peer.expect(481)
        peer.send(peer.request("SUBSCRIBE"))
        assert "INVITE" in ((await peer.expect(405)).get("Allow") or "")
        peer.send(peer.request("TELEPORT"))
        await peer.expect(501)
        bad = peer.request("OPTIONS").replace(b"CSeq: ", b"CSeq: x", 1)
        peer.send(bad)
        assert (await peer.expect(400)).reason.startswith("Bad Request")
        peer.send(b"\r\n\r\n")  # a keep-alive: no answer
        peer.send(b"complete nonsense\r\n\r\n")  # no Via to answer to: dropped
        peer.to_tag = ""
        peer.send(peer.request("OPTIONS"))
        assert (await peer.expect(200)).cseq[1] == "OPTIONS"  # (nothing came before it)


async def test_the_agent_transfers_with_its_tool() -> None:
    """The model calls ``transfer_call``: a REFER goes to the caller's phone, then BYE."""
    target = "sip:desk@127.0.0.1:5999"
    engines = fake_engines(["put me through to the front desk"], ["Transferring you now."])
    engines.llm.replies = [  # type: ignore[attr-defined]
        call("transfer_call", f'{{"target": "{target}"}}'),
        "Transferring you now.",
    ]
    server = VoiceServer(conftest.test_config(), engines, tools=ToolRegistry([transfer_call]))
    await server.start("127.0.0.1", 0)
    try:
        async with Peer(agent_port(server)) as peer:
            media_port = await established(peer)
            line = asyncio.create_task(say(peer, media_port))  # the caller asks
            try:
                refer = await peer.expect_request("REFER", within=20)
            finally:
                line.cancel()
            assert refer.get("Refer-To") == f"<{target}>"
            peer.answer(refer, 202)
            bye = await peer.expect_request("BYE")
            peer.answer(bye)
            assert server.sip is not None
        (session_id,) = set(server.ended) | set(server.sessions)
        record = await server.wait_ended(session_id)
        assert record["closed_reason"] == f"transferred to {target}"
        items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
        outputs = [i for i in items if i.get("type") == "function_call_output"]
        assert outputs and "transferred" in outputs[0]["text"], items
    finally:
        await server.stop()


async def say(peer: Peer, media_port: int) -> None:
    """A phone line: 1 s of loud tone, then silence, one 20 ms packet every 20 ms."""
    packetizer = Packetizer(0)
    audio = np.concatenate([tone(1.0, rate=8000), silence(30.0, rate=8000)])
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(audio), 160)):
        packet = packetizer.packet(g711.ulaw_encode(audio[i : i + 160])).encode()
        peer.send_rtp(packet, to_port=media_port)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


async def test_shutdown_says_bye() -> None:
    server = VoiceServer(conftest.test_config(), fake_engines(["x"], ["y"]))
    await server.start("127.0.0.1", 0)
    async with Peer(agent_port(server)) as peer:
        await established(peer)
        await server.stop()
        bye = await peer.expect_request("BYE")
        assert "server shutting down" in (bye.get("Reason") or "")
    assert server.sip is not None and not server.sip.dialogs


async def test_a_taken_sip_port_leaves_the_server_serving(caplog: pytest.LogCaptureFixture) -> None:
    first = VoiceServer(conftest.test_config(), fake_engines(["x"], ["y"]))
    await first.start("127.0.0.1", 0)
    config = conftest.test_config()
    config.sip.port = agent_port(first)
    second = VoiceServer(config, fake_engines(["x"], ["y"]))
    try:
        assert await second.start("127.0.0.1", 0) > 0
        assert second.sip is None
        assert any("SIP is off: cannot listen" in r.getMessage() for r in caplog.records)
    finally:
        await second.stop()
        await first.stop()


async def test_wrong_credentials_are_refused() -> None:
    config = conftest.test_config()
    config.sip.auth_users = "alice:right"
    server = VoiceServer(config, fake_engines(["x"], ["y"]))
    await server.start("127.0.0.1", 0)
    try:
        async with Peer(agent_port(server)) as peer:
            peer.invite()
            challenge = digest.parse_challenge((await peer.expect(401)).need("WWW-Authenticate"))
            wrong = digest.authorization(
                challenge, username="alice", password="wrong", method="INVITE", uri="sip:agent"
            )
            body = peer.offer()
            peer.to_tag = ""  # (a new INVITE, not one in the 401's dialog)
            peer.send(peer.request("INVITE", body=body, headers=[("Authorization", wrong)]))
            assert (await peer.expect(403)).reason.startswith("Forbidden")
            forged = digest.Challenge("voice", "123.abc", qop="auth")
            bad_nonce = digest.authorization(
                forged, username="alice", password="right", method="INVITE", uri="sip:agent"
            )
            peer.to_tag = ""
            peer.send(peer.request("INVITE", body=body, headers=[("Authorization", bad_nonce)]))
            assert "did not issue" in (await peer.expect(403)).reason
        assert server.sip is not None and not server.sip.dialogs and not server.sessions
    finally:
        await server.stop()


async def test_hold_and_resume_by_reinvite(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    async with Peer(agent_port(phone_server)) as peer:
        await established(peer)
        (inbound,) = phone_server.sip.dialogs.values()
        assert inbound.call is not None and inbound.call.media.sending
        for direction, answer, sending in (
            ("sendonly", "a=recvonly", False),
            ("sendrecv", "a=sendrecv", True),
        ):
            cseq = peer.cseq + 1
            peer.send(peer.request("INVITE", body=peer.offer("8", direction)))
            ok = await peer.expect(200)
            assert ok.cseq == (cseq, "INVITE") and answer in ok.body.decode()
            assert "RTP/AVP 8" in ok.body.decode()  # the codec changed to PCMA
            peer.send(peer.request("ACK", cseq=cseq))
            assert inbound.call.media.sending is sending
            assert inbound.call.media.media.payload == 8
        peer.send(peer.request("BYE"))
        await peer.expect(200)
