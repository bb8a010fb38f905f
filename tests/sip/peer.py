"""A hand-driven SIP peer on a loopback UDP socket: the test writes each request as bytes and
reads what the agent sends back, to test the timers and the corner cases real phones rarely
produce on cue."""

from __future__ import annotations

import asyncio
import secrets

from transports.sip.message import Request, Response, parse, response_to


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[bytes, tuple[str, int]]]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))


class Peer:
    """``async with Peer(agent_port) as peer``: ``peer.invite()``, ``await peer.expect(200)``."""

    sip_transport = "UDP"
    """What its Via says (``tcp_peer.py``: TCP)."""

    def __init__(self, agent_port: int) -> None:
        self.agent = ("127.0.0.1", agent_port)
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.to_tag = ""
        self.cseq = 1
        self.invite_branch = ""
        self.rtp: asyncio.DatagramTransport | None = None
        self.rtp_queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.rtp_port = 0

    async def __aenter__(self) -> Peer:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.queue), local_addr=("127.0.0.1", 0)
        )
        self.port = self.transport.get_extra_info("sockname")[1]
        self.rtp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.rtp_queue), local_addr=("127.0.0.1", 0)
        )
        self.rtp_port = self.rtp.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for transport in (self.transport, self.rtp):
            if transport is not None:
                transport.close()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.agent)

    def request(
        self,
        method: str,
        *,
        branch: str | None = None,
        cseq: int | None = None,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> bytes:
        """A request in this peer's call (the To tag once the agent gave one)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        to = f"<sip:agent@127.0.0.1:{self.agent[1]}>" + (
            f";tag={self.to_tag}" if self.to_tag else ""
        )
        via = f"SIP/2.0/{self.sip_transport} 127.0.0.1:{self.port}"
        request = Request(
            method=method,
            uri=f"sip:agent@127.0.0.1:{self.agent[1]}",
            headers=[
                ("Via", f"{via};branch={branch or _branch()};rport"),
                ("From", f"<sip:peer@127.0.0.1:{self.port}>;tag={self.tag}"),
                ("To", to),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<{self.contact}>"),
                ("Max-Forwards", "70"),
                *(headers or []),
            ],
            body=body,
        )
        if body:
            request.set("Content-Type", "application/sdp")
        return request.encode()

    @property
    def contact(self) -> str:
        suffix = ";transport=tcp" if self.sip_transport == "TCP" else ""
        return f"sip:peer@127.0.0.1:{self.port}{suffix}"

    def offer(self, payloads: str = "0 101", direction: str = "sendrecv") -> bytes:
        lines = [
            "v=0",
            "o=peer 1 1 IN IP4 127.0.0.1",
            "s=-",
            "c=IN IP4 127.0.0.1",
            "t=0 0",
            f"m=audio {self.rtp_port} RTP/AVP {payloads}",
            "a=rtpmap:101 telephone-event/8000",
            f"a={direction}",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    def invite(self, payloads: str = "0 101") -> bytes:
        self.invite_branch = _branch()
        data = self.request("INVITE", branch=self.invite_branch, cseq=1, body=self.offer(payloads))
        self.send(data)
        return data

    async def receive(self, within: float = 10.0) -> tuple[Request | Response, float]:
        """The next SIP message from the agent, and when it came (loop time)."""
        async with asyncio.timeout(within):
            data, _ = await self.queue.get()
        message = parse(data)
        if isinstance(message, Response) and message.to_tag and not self.to_tag:
            self.to_tag = message.to_tag
        return message, asyncio.get_running_loop().time()

    async def expect(self, status: int, within: float = 10.0) -> Response:
        """Read responses until one with ``status`` (provisional ones before it are skipped)."""
        async with asyncio.timeout(within):
            while True:
                message, _ = await self.receive(within)
                if isinstance(message, Response) and message.status == status:
                    return message
                if isinstance(message, Response) and message.status >= 200:
                    raise AssertionError(f"expected {status}, got {message.status}")

    async def expect_request(self, method: str, within: float = 10.0) -> Request:
        async with asyncio.timeout(within):
            while True:
                message, _ = await self.receive(within)
                if isinstance(message, Request) and message.method == method:
                    return message

    def answer(self, request: Request, status: int = 200) -> None:
        self.send(response_to(request, status).encode())

    def send_rtp(self, packet: bytes, *, to_port: int, from_other: bool = False) -> None:
        """An RTP packet to the agent's media port (from this peer's RTP port, or another)."""
        assert self.rtp is not None and self.transport is not None
        sender = self.transport if from_other else self.rtp
        sender.sendto(packet, ("127.0.0.1", to_port))


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(6)
