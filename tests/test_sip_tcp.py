"""SIP over TCP against a hand-driven peer on a loopback connection (``tests/sip/tcp_peer.py``)
and the fake engines: a call answered and ended on the connection it came on, no
retransmission of our requests on TCP, streams that cannot be framed, keep-alives, the idle
timeout and the bound on connections. baresip and sipp over TCP: ``test_sip_baresip.py``,
``test_sip_sipp.py``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from transports.sip.message import Request, param, uri_of
from transports.sip.sdp import parse_offer
from transports.sip.tcp import TcpPeer as AgentTcpPeer
from transports.sip.tcp import TcpSettings
from transports.sip.transaction import Timers
from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines
from .sip.baresip import free_udp_port
from .sip.peer import Peer
from .sip.tcp_peer import TcpPeer

pytestmark = [pytest.mark.e2e]


def free_sip_port() -> int:
    """A port free on both UDP and TCP."""
    for _ in range(100):
        port = free_udp_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free on both UDP and TCP")


async def start_server(**sip: object) -> VoiceServer:
    config = conftest.test_config()
    for key, value in sip.items():
        setattr(config.sip, key, value)
    server = VoiceServer(config, fake_engines(["hello there"], ["Hi, how can I help?"]))
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def phone_server() -> AsyncIterator[VoiceServer]:
    server = await start_server()
    yield server
    await server.stop()


def agent_port(server: VoiceServer) -> int:
    assert server.sip is not None
    return server.sip.port


async def options(peer: Peer) -> None:
    """An OPTIONS outside any dialog, answered 200."""
    peer.to_tag = ""  # (a To tag of an answer outside a dialog belongs to no dialog)
    peer.send(peer.request("OPTIONS"))
    assert (await peer.expect(200)).cseq[1] == "OPTIONS"


async def established(peer: Peer) -> int:
    """INVITE → 100, 180, 200 → ACK; returns the agent's RTP port."""
    peer.invite()
    await peer.expect(100)
    await peer.expect(180)
    ok = await peer.expect(200)
    peer.send(peer.request("ACK", cseq=1))
    peer.send(peer.request("OPTIONS"))  # a round trip: the ACK has been taken when it returns
    await peer.expect(200)
    return parse_offer(ok.body).port


async def test_a_call_over_tcp_is_answered_and_ended_on_its_connection(
    phone_server: VoiceServer,
) -> None:
    agent = phone_server.sip
    assert agent is not None and agent.tcp is not None
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.invite()
        trying = await peer.expect(100)
        via = trying.need("Via")
        assert via.startswith("SIP/2.0/TCP ") and param(via, "received") == "127.0.0.1"
        ok = await peer.expect(200)
        contact = uri_of(ok.need("Contact"))
        assert contact == f"sip:agent@127.0.0.1:{agent.port};transport=tcp", contact
        assert parse_offer(ok.body).port > 0  # the media stays RTP over UDP
        peer.send(peer.request("ACK", cseq=1))
        peer.send(peer.request("OPTIONS"))
        await peer.expect(200)
        (inbound,) = agent.dialogs.values()
        assert inbound.source == ("127.0.0.1", peer.port)
        assert isinstance(inbound.source, AgentTcpPeer)
        assert inbound.dialog.state.value == "confirmed"
        # the agent hangs up: its BYE comes on the same connection, Via TCP
        inbound.hangup("done talking")
        bye = await peer.expect_request("BYE")
        assert bye.need("Via").startswith(f"SIP/2.0/TCP 127.0.0.1:{agent.port};")
        assert uri_of(bye.need("Contact")).endswith(";transport=tcp")
        assert bye.uri == peer.contact
        peer.answer(bye)
        assert inbound.call is not None
        session = inbound.call.session
    record = await phone_server.wait_ended(session.id)
    assert record["closed_reason"] == "done talking"


async def test_the_caller_hangs_up_over_tcp(phone_server: VoiceServer) -> None:
    async with TcpPeer(agent_port(phone_server)) as peer:
        await established(peer)
        peer.send(peer.request("BYE"))
        assert (await peer.expect(200)).cseq[1] == "BYE"
    (session_id,) = set(phone_server.ended) | set(phone_server.sessions)
    record = await phone_server.wait_ended(session_id)
    assert record["closed_reason"] == "the caller hung up (BYE)"


@pytest.mark.parametrize("peer_kind", [TcpPeer, Peer], ids=["tcp", "udp"])
async def test_our_bye_is_retransmitted_on_udp_only(
    phone_server: VoiceServer, peer_kind: type[Peer]
) -> None:
    """Timer E resends a request on UDP; on TCP it is sent once and timer F alone ends it
    (RFC 3261 §17.1.2.2). The peer never answers the BYE."""
    agent = phone_server.sip
    assert agent is not None
    async with peer_kind(agent_port(phone_server)) as peer:
        await established(peer)
        agent.options.timers = Timers(t1=0.05)  # (64·T1 = 3.2 s)
        (inbound,) = agent.dialogs.values()
        assert inbound.task is not None
        inbound.hangup("done talking")
        async with asyncio.timeout(20):
            await asyncio.shield(inbound.task)  # the BYE's transaction gave up (408)
        byes = []
        while not peer.queue.empty():
            message, _ = await peer.receive()
            if isinstance(message, Request) and message.method == "BYE":
                byes.append(message)
    if peer_kind is TcpPeer:
        assert len(byes) == 1, byes
    else:
        assert len(byes) >= 5, byes


async def test_the_200_is_resent_until_the_ack_on_tcp_too(phone_server: VoiceServer) -> None:
    """RFC 3261 §13.3.1.4: the 2xx is retransmitted until its ACK whatever the transport (the
    ACK is end to end)."""
    agent = phone_server.sip
    assert agent is not None
    agent.options.timers = Timers(t1=0.05)
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.invite()
        first, second = await peer.expect(200), await peer.expect(200)
        assert first.cseq == second.cseq == (1, "INVITE")
        peer.send(peer.request("ACK", cseq=1))
        peer.send(peer.request("OPTIONS"))
        assert (await peer.expect(200)).cseq[1] == "OPTIONS"
        (inbound,) = agent.dialogs.values()
        assert inbound.ok is not None and inbound.ok.stopped


async def test_no_content_length_is_answered_400_and_closed(phone_server: VoiceServer) -> None:
    async with TcpPeer(agent_port(phone_server)) as bad, TcpPeer(agent_port(phone_server)) as good:
        no_length = bad.request("OPTIONS").replace(b"Content-Length: 0\r\n", b"")
        assert b"Content-Length" not in no_length
        bad.send(no_length + good.request("OPTIONS"))  # (the second cannot be found)
        answer = await bad.expect(400)
        assert "Content-Length" in answer.reason and answer.cseq[1] == "OPTIONS"
        await bad.closed(within=5)
        await options(good)  # every other connection is served on
    assert phone_server.sip is not None and phone_server.sip.malformed == 1


async def test_a_content_length_past_the_limit_is_413_and_closed(
    phone_server: VoiceServer,
) -> None:
    async with TcpPeer(agent_port(phone_server)) as peer:
        options = peer.request("OPTIONS").replace(b"Content-Length: 0", b"Content-Length: 900000")
        peer.send(options)
        assert "900000" in (await peer.expect(413)).reason
        await peer.closed(within=5)


async def test_a_header_block_past_the_limit_is_closed(phone_server: VoiceServer) -> None:
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.send(b"OPTIONS sip:agent@127.0.0.1 SIP/2.0\r\nX-Pad: " + b"a" * 20_000)
        await peer.closed(within=5)
        assert peer.raw == b""  # (nothing to answer: no header block was read)


async def test_a_framed_malformed_request_keeps_the_connection(
    phone_server: VoiceServer,
) -> None:
    """Its end is known, so only that message is refused."""
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.send(peer.request("OPTIONS").replace(b" OPTIONS\r\n", b" OPTIONS extra\r\n"))
        assert "CSeq" in (await peer.expect(400)).reason
        await options(peer)
        assert peer.is_open


async def test_keep_alive_ping_is_answered(phone_server: VoiceServer) -> None:
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.send(b"\r\n\r\n")
        peer.send(peer.request("OPTIONS"))
        await peer.expect(200)
        assert peer.raw.startswith(b"\r\nSIP/2.0 200 ")


async def test_idle_connections_close_but_not_one_with_a_call() -> None:
    server = await start_server(tcp_idle_timeout_s=0.3)
    try:
        async with (
            TcpPeer(agent_port(server)) as caller,
            TcpPeer(agent_port(server)) as idle,
        ):
            await established(caller)
            await options(idle)
            await idle.closed(within=5)  # (it came after the caller's last message)
            assert caller.is_open  # idle longer, but a call is on it
            caller.send(caller.request("BYE"))
            await caller.expect(200)
            await caller.closed(within=5)  # the call is over: now it is idle
    finally:
        await server.stop()


async def test_connections_past_the_bound_are_closed() -> None:
    server = await start_server(tcp_max_connections=2)
    assert server.sip is not None and server.sip.tcp is not None
    try:
        async with TcpPeer(agent_port(server)) as one, TcpPeer(agent_port(server)) as two:
            for peer in (one, two):
                await options(peer)
            async with TcpPeer(agent_port(server)) as three:
                await three.closed(within=5)
            assert server.sip.tcp.refused == 1
            await options(one)  # the first two are served on
    finally:
        await server.stop()


async def test_tcp_off_leaves_udp() -> None:
    server = await start_server(tcp=False)
    try:
        assert server.sip is not None and server.sip.tcp is None
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", agent_port(server))
        async with Peer(agent_port(server)) as peer:
            await options(peer)
    finally:
        await server.stop()


async def test_shutdown_says_bye_on_the_connection() -> None:
    server = await start_server()
    async with TcpPeer(agent_port(server)) as peer:
        await established(peer)
        await server.stop()
        bye = await peer.expect_request("BYE")
        assert "server shutting down" in (bye.get("Reason") or "")
        await peer.closed(within=5)


async def test_a_peer_that_does_not_read_is_dropped() -> None:
    """Its answers pile up past ``max_write_buffer``: the connection is aborted, the agent
    serves on."""
    server = await start_server()
    agent = server.sip
    assert agent is not None and agent.tcp is not None
    agent.tcp.settings = TcpSettings(max_write_buffer=64 * 1024)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        async with Peer(agent.port) as shape:  # (only to write the requests' bytes)
            batch = b"".join(shape.request("OPTIONS") for _ in range(500))
        async with asyncio.timeout(60):
            with contextlib.suppress(ConnectionError):
                while not writer.is_closing():  # never reading a byte of the answers
                    writer.write(batch)
                    await writer.drain()
        assert not agent.tcp.connections
        writer.close()
        async with TcpPeer(agent.port) as peer:
            await options(peer)
    finally:
        await server.stop()


async def test_a_taken_tcp_port_leaves_udp(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_sip_port()))
        taken.listen()
        server = await start_server(port=taken.getsockname()[1])
        try:
            assert server.sip is not None and server.sip.tcp is None
            assert server.sip.port == taken.getsockname()[1]
            assert any("SIP over TCP is off" in r.getMessage() for r in caplog.records)
            async with Peer(agent_port(server)) as peer:
                await options(peer)
        finally:
            await server.stop()


async def test_cancel_while_ringing_over_tcp(phone_server: VoiceServer) -> None:
    assert phone_server.sip is not None
    phone_server.sip.options.ring_ms = 10_000
    async with TcpPeer(agent_port(phone_server)) as peer:
        peer.invite()
        await peer.expect(180)
        peer.send(peer.request("CANCEL", branch=peer.invite_branch, cseq=1))
        cancelled = [await peer.expect(200, within=5), await peer.expect(487, within=5)]
        assert [r.cseq[1] for r in cancelled] == ["CANCEL", "INVITE"]
        peer.send(peer.request("ACK", branch=peer.invite_branch, cseq=1))
        await options(peer)
    assert not phone_server.sip.dialogs and not phone_server.sessions


def test_options_over_tcp_on_uvloop() -> None:
    """``voice serve`` runs on uvloop, whose TCP transports are not ``asyncio.Transport``s."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        server = await start_server()
        try:
            async with TcpPeer(agent_port(server)) as peer:
                await options(peer)
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
