"""The SIP user agent on UDP and TCP: calls in and out, each one session (``call.py``).

TCP (``tcp.py``) listens at the UDP port; a request is answered on the connection it came on,
and a call that came on TCP stays on it (:meth:`SipAgent.route`). Our requests are not resent on
TCP (no timers A, E); a 2xx to an INVITE is, until its ACK, whatever the transport (§13.3.1.4).

Every request is parsed and checked here, answered once per transaction (``transaction.py``:
a retransmitted request gets the same answer and is handled once), and handed to its handler:
INVITE, ACK, CANCEL, BYE, INFO and NOTIFY to the calls (``calls.py``: each call a dialog,
inbound or answered outbound), OPTIONS answered here. A method we know but do not serve: 405;
one we do not know: 501. A malformed request: 400 with the reason (a message too broken to
answer — no Via, no Call-ID — is dropped). Our own requests (BYE, REFER, REGISTER) are
client transactions (:meth:`SipAgent.transact`); outbound calls are placed by
``outbound.py``, registration with a registrar kept fresh by ``register.py``.

Everything that can hang has a timeout: the INVITE's ring time, the non-INVITE transactions
(64·T1), the peer's RTP (``rtp_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.session import Session
from pipeline.tasks import cancel_and_wait

from .calls import ALLOW, Calls, Hooks, InboundCall
from .dialog import Dialog
from .message import (
    REASONS,
    Request,
    Response,
    SipError,
    canonical,
    host_port,
    parse,
    response_to,
    stamp_via,
)
from .outbound import Outcome, place_call
from .register import Registration, RegistrationSettings, keep_registered
from .tcp import SipTcp, TcpPeer, TcpSettings
from .transaction import Retransmit, ServerTransactions, Timers, key

__all__ = ["Hooks", "InboundCall", "SipAgent", "SipOptions"]

log = logging.getLogger("voice.transport.sip")
KNOWN = {"REGISTER", "SUBSCRIBE", "MESSAGE", "PRACK", "UPDATE", "PUBLISH", "REFER"}
"""Methods we know but do not serve as a UAS: 405 with ``Allow``; any other unknown one: 501."""


@dataclass(slots=True)
class SipOptions:
    host: str = "127.0.0.1"
    port: int = 5060
    user: str = "agent"
    user_agent: str = "voice-agent"
    ring_ms: int = 0
    """How long an inbound call rings (180) before it is answered."""
    rtp_timeout: float = 30.0
    ring_timeout: float = 30.0
    """An outbound call not answered within this is cancelled (``no-answer``)."""
    max_dialogs: int = 64
    jitter_depth: int = 3
    echo_cancellation: bool = False
    """Take the agent's own voice out of the caller's audio (a speakerphone's echo)."""
    echo_gate_db: float = 0.0
    """With it, mute what the echo alone explains (:class:`~pipeline.echo.ResidualEchoGate`'s
    margin); 0: no gate."""
    timers: Timers = field(default_factory=Timers)
    registration: RegistrationSettings | None = None
    """Register (and stay registered) with a registrar; None: no REGISTER."""
    auth_users: dict[str, str] = field(default_factory=dict)
    """Digest users (name → password) an inbound INVITE must authenticate as; empty: none."""
    auth_realm: str = "voice"
    tcp: TcpSettings | None = field(default_factory=TcpSettings)
    """Listen on TCP too, at the UDP socket's address and port (``tcp.py``); None: UDP only."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, agent: SipAgent) -> None:
        self.agent = agent

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.agent.datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)


class SipAgent:
    """One UDP socket, every dialog on it. :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        options: SipOptions,
        hooks: Hooks,
    ) -> None:
        self.options = options
        self.hooks = hooks
        self.transactions = ServerTransactions(options.timers)
        self.clients: dict[str, asyncio.Queue[Response]] = {}
        """Our client transactions by Via branch: the responses to each."""
        self.acks: dict[str, tuple[bytes, tuple[str, int]]] = {}
        """The ACK of each answered outbound call, for its 2xx's retransmissions."""
        self.malformed = 0
        self.registration: Registration | None = None
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.tcp: SipTcp | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = Calls(self)

    @property
    def dialogs(self) -> dict[str, InboundCall]:
        """The calls by Call-ID (:class:`~.calls.Calls`)."""
        return self.calls.dialogs

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    @property
    def contact(self) -> str:
        return f"sip:{self.options.user}@{self.address}"

    def contact_for(self, peer: tuple[str, int]) -> str:
        """Our Contact URI for a dialog with ``peer``: ``;transport=tcp`` when it is on TCP."""
        return self.contact + (";transport=tcp" if isinstance(peer, TcpPeer) else "")

    async def start(self) -> int:
        """Bind the UDP socket and, unless ``options.tcp`` is None, listen on TCP at the same
        port (with ``options.port`` 0, a port free for both; a given port taken on TCP alone
        leaves UDP only); returns the port. Raises :class:`OSError` when UDP cannot bind."""
        loop = asyncio.get_running_loop()
        for attempt in range(1, 6):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(self.options.host, self.options.port)
            )
            self._transport = transport
            self.port = transport.get_extra_info("sockname")[1]
            try:
                await self._listen_tcp()
                break
            except OSError as exc:
                if self.options.port:  # (the TCP port alone is taken: UDP serves on)
                    log.error(
                        "SIP over TCP is off: cannot listen on tcp %s (%s)", self.address, exc
                    )
                    break
                transport.close()
                if attempt == 5:
                    raise
        kinds = "udp" if self.tcp is None else "udp+tcp"
        log.info("SIP agent listening on %s:%s (%s)", kinds, self.address, self.contact)
        if self.options.registration is not None:
            self.registration = Registration(self.options.registration)
            self.spawn(keep_registered(self, self.registration), "sip-register")
        return self.port

    async def _listen_tcp(self) -> None:
        if self.options.tcp is None:
            return
        tcp = SipTcp(self, self.options.tcp)
        await tcp.start(self.options.host, self.port)
        self.tcp = tcp

    async def stop(self) -> None:
        """Hang up every call (BYE, sent once: no time to wait for answers; 503 to a ringing
        one), then close the socket."""
        await self.calls.close("server shutting down")
        await cancel_and_wait(list(self._tasks))
        if self._transport is not None:
            self._transport.close()
        if self.tcp is not None:
            await self.tcp.stop()

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send ``data`` to ``addr``: on TCP when it is a :class:`TcpPeer`, else a datagram."""
        if isinstance(addr, TcpPeer):
            if self.tcp is not None:
                self.tcp.send(data, addr)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ receiving

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """One message from ``addr``: a datagram, or one framed on a TCP connection."""
        if not data.strip(b"\r\n"):
            return  # keep-alive (RFC 5626 CRLF)
        try:
            message = parse(data)
        except SipError as exc:
            self._malformed(data, addr, exc)
            return
        try:
            if isinstance(message, Response):
                self._response(message)
            else:
                self._request(message, addr)
        except SipError as exc:
            if isinstance(message, Request) and message.method != "ACK":
                self.reply(message, addr, exc.status, reason=_reason(exc))
            self._complain(addr, exc)

    def _malformed(self, data: bytes, addr: tuple[str, int], exc: SipError) -> None:
        """Answer what can be answered: a request whose Via, From, To, Call-ID and CSeq can be
        found line by line gets the error status; anything else is dropped."""
        self._complain(addr, exc)
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
        if not head or head[0].startswith("SIP/") or head[0].startswith("ACK "):
            return
        lines = [tuple(s.strip() for s in h.split(":", 1)) for h in head[1:] if ":" in h]
        stub = Request(method="?", uri="sip:?", headers=[(k, v) for k, v in lines])
        try:
            _check(stub)
        except SipError:
            return
        self.send(response_to(stub, exc.status, reason=_reason(exc)).encode(), addr)

    def unframeable(self, head: bytes, addr: tuple[str, int], error: SipError) -> None:
        """A TCP connection's bytes cannot be framed (``tcp.py``): answer the request if its
        header block was read (400, 413); the connection then closes."""
        self._malformed(head, addr, error)

    def in_use(self, peer: TcpPeer) -> bool:
        """Whether a call came in on the TCP connection with ``peer`` (it stays open)."""
        return any(i.source == peer and not i.dialog.ended for i in self.dialogs.values())

    def _complain(self, addr: tuple[str, int], exc: SipError) -> None:
        self.malformed += 1
        log.warning("SIP from %s:%d: %s (answered %d)", addr[0], addr[1], exc, exc.status)

    def _request(self, request: Request, addr: tuple[str, int]) -> None:
        _check(request)
        if request.method == "ACK":
            self.calls.ack(request)
            return
        k = key(request, addr)
        now = asyncio.get_running_loop().time()
        seen, answer = self.transactions.seen(k, now)
        if seen:  # a retransmission: the same answer again (or nothing yet)
            if answer is not None:
                self.send(answer, addr)
            return
        self.transactions.answered(k, None, now)
        if request.cseq[1] != request.method:
            raise SipError("CSeq method differs from the request's")
        handler = {
            "INVITE": self.calls.invite,
            "BYE": self.calls.bye,
            "CANCEL": self.calls.cancel,
            "OPTIONS": self._options,
            "INFO": self.calls.info,
            "NOTIFY": self.calls.notify,
        }.get(request.method)
        if handler is not None:
            handler(request, addr)
        elif request.method in KNOWN:
            self.reply(request, addr, 405, headers=[("Allow", ALLOW)])
        else:
            self.reply(request, addr, 501, headers=[("Allow", ALLOW)])

    def reply(
        self,
        request: Request,
        addr: tuple[str, int],
        status: int,
        *,
        to_tag: str | None = None,
        reason: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> bytes:
        """Send a response (to where the request came from: symmetric, RFC 3581) and remember
        it for the transaction's retransmissions."""
        extra = [("Server", self.options.user_agent), *(headers or [])]
        if body:
            extra.append(("Content-Type", "application/sdp"))
        if request.to_tag is None and to_tag is None and status > 100:
            to_tag = secrets.token_hex(6)
        response = response_to(request, status, to_tag=to_tag, reason=reason, headers=extra)
        response.body = body
        for i, (name, value) in enumerate(response.headers):
            if canonical(name) == "via":  # the top one
                response.headers[i] = (name, stamp_via(value, addr))
                break
        data = response.encode()
        self.send(data, addr)
        if request.method != "ACK":
            self.transactions.answered(key(request, addr), data, asyncio.get_running_loop().time())
        return data

    async def call(
        self, target: str, open_session: Callable[[], Session]
    ) -> tuple[Outcome, InboundCall | None]:
        """Call ``target`` (``sip:`` URI): see :func:`~.outbound.place_call`. Cancel-safe."""
        return await place_call(self, target, open_session)

    def adopt(self, record: InboundCall) -> None:
        """An answered outbound call: served like an inbound one (:meth:`Calls.adopt`)."""
        self.calls.adopt(record)

    def hangup(self, call_id: str, reason: str = "hung up by the server") -> bool:
        """End a call from our side (the session closes, BYE follows); False if no such call."""
        return self.calls.hangup(call_id, reason)

    async def refer(self, call_id: str, target: str) -> int:
        """Blind transfer (RFC 3515) of a confirmed call: see :meth:`Calls.refer`."""
        return await self.calls.refer(call_id, target)

    def send_in_dialog(self, dialog: Dialog, request: Request) -> None:
        """Send a request that needs no answer (ACK) to the dialog's remote target."""
        self.send(request.encode(), self.route(dialog))

    def route(self, dialog: Dialog) -> tuple[str, int]:
        """Where the dialog's requests go: its remote target, on the dialog's transport; on
        TCP, the connection the call came in on while it is open (how a phone behind a NAT
        is reached), else a connection to the target."""
        target = host_port(dialog.remote_target)
        if dialog.transport != "TCP":
            return target
        inbound = self.dialogs.get(dialog.call_id)
        source = None if inbound is None else inbound.source
        if isinstance(source, TcpPeer) and self.tcp is not None and self.tcp.connected(source):
            return source
        return TcpPeer(*target)

    def _options(self, request: Request, addr: tuple[str, int]) -> None:
        if request.to_tag is not None:
            self.calls.in_dialog(request)
        headers = [
            ("Allow", ALLOW),
            ("Accept", "application/sdp"),
            ("Accept-Language", "en"),
            ("Supported", ""),
        ]
        self.reply(request, addr, 200, headers=headers)

    # ------------------------------------------------------------------ our requests

    def _response(self, response: Response) -> None:
        queue = self.clients.get(response.branch or "")
        if queue is None:  # a retransmitted 2xx to our INVITE (its ACK was lost): ACK again
            ack = self.acks.get(response.call_id)
            if ack is not None and 200 <= response.status < 300 and response.cseq[1] == "INVITE":
                self.send(*ack)
            return
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(response)

    async def transact(self, request: Request, addr: tuple[str, int]) -> Response:
        """Send a non-INVITE request, retransmitted on timer E, and wait for its final
        response; a timeout answers 408. Cancel-safe."""
        branch = request.branch or ""
        queue: asyncio.Queue[Response] = asyncio.Queue(maxsize=16)
        self.clients[branch] = queue
        loop = asyncio.get_running_loop()
        data = request.encode()
        again = Retransmit(data, loop.time(), self.options.timers)
        if isinstance(addr, TcpPeer):  # reliable: no timer E, only F's deadline (§17.1.2.2)
            again.next_at = again.deadline
        self.send(data, addr)
        try:
            while True:
                wait = (again.deadline if again.expired else again.next_at) - loop.time()
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        response = await queue.get()
                except TimeoutError:
                    if again.expired:
                        return Response(status=408, reason="Request Timeout (no answer)")
                    resend = again.due(loop.time())
                    if resend is not None:
                        self.send(resend, addr)
                    continue
                if response.status >= 200:
                    return response
                again.stop()  # a provisional answer: stop retransmitting, wait on
                again = Retransmit(data, loop.time(), self.options.timers)
                again.next_at = again.deadline
        finally:
            self.clients.pop(branch, None)


def _reason(exc: SipError) -> str:
    base = REASONS.get(exc.status, "Error")
    return f"{base} ({str(exc)[:80]})".replace("\r", " ").replace("\n", " ")


def _check(message: Request) -> None:
    """The headers every request must have (§8.1.1): :class:`SipError` 400 otherwise."""
    for name in ("Via", "From", "To", "Call-ID"):
        message.need(name)
    _ = message.cseq
