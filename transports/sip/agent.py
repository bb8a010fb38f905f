"""The SIP user agent on UDP and TCP: calls in and out, each one session (``call.py``).

TCP (``tcp.py``) listens at the UDP port; a request is answered on the connection it came on,
and a call that came on TCP stays on it (:meth:`SipAgent.route`). Our requests are not resent on
TCP (no timers A, E); a 2xx to an INVITE is, until its ACK, whatever the transport (§13.3.1.4).

Inbound, for an INVITE: 486 when the server is at capacity (503 while it is not ready), 488
when the offer has no codec we speak, otherwise 100 Trying, 180 Ringing and, once the session
and its RTP port are open, 200 OK with the SDP answer, retransmitted on the RFC 3261 timers
until the ACK comes (no ACK within 64·T1: BYE). In a dialog: BYE (200, the call ends), re-INVITE
(hold, resume, a codec change: 200 with a new answer), INFO (``application/dtmf-relay`` keypad
digits), NOTIFY (a transfer's progress), OPTIONS. CANCEL before the answer: 200, then 487 on
the INVITE. A request for a dialog we do not have: 481. A method we know but do not serve: 405;
one we do not know: 501. A malformed request: 400 with the reason (a message too broken to
answer — no Via, no Call-ID — is dropped). Every response is remembered per transaction
(``transaction.py``), so a retransmitted request gets the same answer and is handled once.

Outbound (``outbound.py``): :meth:`SipAgent.call` sends an INVITE with our offer. Optional:
digest authentication of new INVITEs (401 with a challenge, 403 for wrong credentials;
``digest.py``) and registration with a registrar, kept fresh (``register.py``). The server's
decisions (may a call ring, accept or reject it, what to do when it ends) are its
:class:`Hooks`; the SIP agent knows nothing of the call registry.

Everything that can hang has a timeout: the INVITE's ring time, the non-INVITE transactions
(64·T1), the peer's RTP (``rtp_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.errors import ToolError
from pipeline.session import Session
from pipeline.tasks import cancel_and_wait

from . import digest, sdp
from .call import SipCall
from .dialog import Dialog, DialogError, State
from .media import RtpMedia
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

log = logging.getLogger("voice.transport.sip")
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, REFER"
KNOWN = {"REGISTER", "SUBSCRIBE", "MESSAGE", "PRACK", "UPDATE", "PUBLISH", "REFER"}
"""Methods we know but do not serve as a UAS: 405 with ``Allow``; any other unknown one: 501."""
_INFO_DIGITS = "0123456789*#ABCD"
_TOOL = "transfer_call"
_BAD = ' <>"\r\n'


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
    timers: Timers = field(default_factory=Timers)
    registration: RegistrationSettings | None = None
    """Register (and stay registered) with a registrar; None: no REGISTER."""
    auth_users: dict[str, str] = field(default_factory=dict)
    """Digest users (name → password) an inbound INVITE must authenticate as; empty: none."""
    auth_realm: str = "voice"
    tcp: TcpSettings | None = field(default_factory=TcpSettings)
    """Listen on TCP too, at the UDP socket's address and port (``tcp.py``); None: UDP only."""


class Hooks(Protocol):
    """What the server decides about calls (``voice/sip_calls.py``)."""

    def admit(self) -> int | None:
        """Whether a new call may ring: None, or the status to refuse it with (486, 503)."""
        ...

    async def incoming(self, call: InboundCall) -> None:
        """Decide a ringing call: :meth:`InboundCall.answer` it with a session, or
        :meth:`InboundCall.reject` it. Returning without either rejects it (480)."""
        ...

    def ended(self, call: InboundCall) -> None:
        """The call is over (answered or not); its session, if any, has closed."""
        ...


_PRIVATE_HEADERS = {"authorization", "proxy-authorization"}


@dataclass(slots=True)
class InboundCall:
    """A call that came in: ringing until the server answers or rejects it, then live."""

    agent: SipAgent
    invite: Request
    source: tuple[str, int]
    dialog: Dialog
    offer: sdp.Offer
    media: sdp.Media
    task: asyncio.Task[None] | None = None
    call: SipCall | None = None
    ok: Retransmit | None = None
    """The 2xx (to the INVITE or a re-INVITE) being retransmitted until its ACK."""
    sdp_version: int = 1
    session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The INVITE's headers, credentials left out."""
        return [(k, v) for k, v in self.invite.headers if k.lower() not in _PRIVATE_HEADERS]

    @property
    def ringing(self) -> bool:
        return self.dialog.state in (State.INCOMING, State.EARLY)

    async def answer(self, session: Session) -> None:
        """Answer with ``session`` (its output rate becomes 8 kHz): RTP opens, 200 OK goes out.
        Raises :class:`SipError` when the call no longer rings (the session is then closed)."""
        await self.agent._answer(self, session)

    def reject(self, status: int, reason: str) -> None:
        """Refuse the ringing call with ``status`` (4xx-6xx); does nothing once it is not."""
        self.agent._reject(self, status, reason)

    def hangup(self, reason: str) -> None:
        """End the call from our side, whatever its state (BYE, or a 480 while ringing)."""
        if self.call is not None:
            self.call.session.close(reason)
        elif self.ringing:
            self.reject(480, reason)

    async def refer(self, target: str) -> int:
        """Blind transfer (REFER); see :meth:`SipAgent.refer`."""
        return await self.agent.refer(self.call_id, target)


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
        self.dialogs: dict[str, InboundCall] = {}
        """Inbound calls by Call-ID (one dialog each: we never fork)."""
        self.transactions = ServerTransactions(options.timers)
        self.clients: dict[str, asyncio.Queue[Response]] = {}
        """Our client transactions by Via branch: the responses to each."""
        self.acks: dict[str, tuple[bytes, tuple[str, int]]] = {}
        """The ACK of each answered outbound call, for its 2xx's retransmissions."""
        self.malformed = 0
        self.registration: Registration | None = None
        self._nonce_key = secrets.token_bytes(16)
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.tcp: SipTcp | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()

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
            self._spawn(keep_registered(self, self.registration), "sip-register")
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
        reason = "server shutting down"
        for inbound in list(self.dialogs.values()):
            dialog = inbound.dialog
            if inbound.ringing:
                self._reject(inbound, 503, reason)
            elif dialog.state in (State.ACCEPTED, State.CONFIRMED):
                dialog.fire("bye")
                bye = dialog.request(
                    "BYE", self.address, headers=[("Reason", f'SIP;text="{reason}"')]
                )
                self.send_in_dialog(dialog, bye)
            if inbound.call is not None:
                inbound.call.session.close(reason)
        await cancel_and_wait([i.task for i in self.dialogs.values() if i.task is not None])
        await cancel_and_wait(list(self._tasks))
        for handle in self._timers:
            handle.cancel()
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

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
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
                self._reply(message, addr, exc.status, reason=_reason(exc))
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
            self._ack(request)
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
            "INVITE": self._invite,
            "BYE": self._bye,
            "CANCEL": self._cancel,
            "OPTIONS": self._options,
            "INFO": self._info,
            "NOTIFY": self._notify,
        }.get(request.method)
        if handler is not None:
            handler(request, addr)
        elif request.method in KNOWN:
            self._reply(request, addr, 405, headers=[("Allow", ALLOW)])
        else:
            self._reply(request, addr, 501, headers=[("Allow", ALLOW)])

    def _reply(
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

    def _in_dialog(self, request: Request) -> InboundCall:
        inbound = self.dialogs.get(request.call_id)
        if inbound is None or not inbound.dialog.matches(request) or inbound.dialog.ended:
            raise SipError("no such dialog", status=481, code="no_dialog")
        inbound.dialog.check_cseq(request)
        return inbound

    # ------------------------------------------------------------------ INVITE

    def _invite(self, request: Request, addr: tuple[str, int]) -> None:
        if request.to_tag is not None:
            self._reinvite(request, addr)
            return
        if request.call_id in self.dialogs:
            raise SipError("a second INVITE for this Call-ID", status=482, code="loop")
        if self.options.auth_users and not self._authenticated(request, addr):
            return
        refused = self.hooks.admit() if len(self.dialogs) < self.options.max_dialogs else 486
        if refused is not None:
            self._reply(request, addr, refused)
            log.info("call %s from %s refused: %d", request.call_id, addr[0], refused)
            return
        offer, media = _negotiate(request)
        self._reply(request, addr, 100)
        transport = "TCP" if isinstance(addr, TcpPeer) else "UDP"
        dialog = Dialog.from_invite(request, self.contact_for(addr), transport)
        inbound = InboundCall(self, request, addr, dialog, offer, media)
        self.dialogs[dialog.call_id] = inbound
        dialog.fire("ring")
        self._reply(request, addr, 180, to_tag=dialog.local_tag)
        inbound.task = self._spawn(self._run_inbound(inbound), f"sip-call-{dialog.call_id[:32]}")

    def _authenticated(self, request: Request, addr: tuple[str, int]) -> bool:
        """Digest authentication of a new INVITE (RFC 3261 §22.2): 401 with a challenge when
        it has no (fresh) credentials, 403 when they are wrong."""
        now = asyncio.get_running_loop().time()
        realm = self.options.auth_realm
        header = request.get("Authorization")
        stale = False
        if header is not None:
            user, nonce = digest.verify(
                header, method="INVITE", realm=realm, users=self.options.auth_users
            )  # (raises SipError 403)
            state = digest.nonce_state(self._nonce_key, nonce, now)
            if state == "fresh":
                log.info("call %s authenticated as %s", request.call_id, user)
                return True
            if state == "forged":
                raise SipError("a nonce we did not issue", status=403, code="auth_failed")
            stale = True
        challenge = digest.challenge(realm, digest.make_nonce(self._nonce_key, now), stale=stale)
        self._reply(request, addr, 401, headers=[("WWW-Authenticate", challenge)])
        return False

    async def _run_inbound(self, inbound: InboundCall) -> None:
        dialog = inbound.dialog
        try:
            if self.options.ring_ms:
                await asyncio.sleep(self.options.ring_ms / 1000)  # ringing (the test of CANCEL)
            await self.hooks.incoming(inbound)
            call = inbound.call
            if call is None:
                if inbound.ringing:
                    self._reject(inbound, 480, "not answered")
                return
            await self._serve(inbound, call)
        except DialogError as exc:
            log.info("call %s ended: %s", dialog.call_id, exc)
        finally:
            await self._forget(inbound)

    async def _serve(self, inbound: InboundCall, call: SipCall) -> None:
        reason = await call.serve(rtp_timeout=self.options.rtp_timeout)
        if call.hangup_reason is None and not inbound.dialog.ended:  # we end it: BYE
            inbound.dialog.fire("bye")
            await self._bye_peer(inbound, reason)

    def adopt(self, record: InboundCall) -> None:
        """An answered outbound call (``outbound.py``): served like an inbound one."""
        assert record.call is not None
        self.dialogs[record.call_id] = record
        record.call.session.transfer = self._transfer_tool(record)

        async def run(call: SipCall) -> None:
            try:
                call.session.create_response()  # the called party hears the agent first
                await self._serve(record, call)
            except DialogError as exc:
                log.info("call %s ended: %s", record.call_id, exc)
            finally:
                await self._forget(record)

        record.task = self._spawn(run(record.call), f"sip-call-{record.call_id[:32]}")

    async def call(
        self, target: str, open_session: Callable[[], Session]
    ) -> tuple[Outcome, InboundCall | None]:
        """Call ``target`` (``sip:`` URI): see :func:`~.outbound.place_call`. Cancel-safe."""
        return await place_call(self, target, open_session)

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

    async def _answer(self, inbound: InboundCall, session: Session) -> None:
        if not inbound.ringing or inbound.call is not None:
            session.close("the call no longer rings")
            raise SipError(f"call {inbound.call_id} is {inbound.dialog.state.value}", status=481)
        media = RtpMedia(
            inbound.media,
            (inbound.offer.address, inbound.offer.port),
            on_audio=lambda _frame, _wire: None,
            on_dtmf=lambda _: None,
            on_sent=lambda _: None,
            signalling_host=inbound.source[0],
            jitter_depth=self.options.jitter_depth,
        )
        media.sending = not inbound.offer.on_hold
        call = SipCall(
            inbound.dialog,
            session,
            media,
            peer=inbound.source[0],
            echo_cancellation=self.options.echo_cancellation,
        )
        inbound.call = call
        session.transfer = self._transfer_tool(inbound)
        try:
            await media.open(self.options.host)
        except OSError as exc:
            session.close("cannot open an RTP port")
            raise SipError(f"cannot open an RTP port: {exc}", status=500) from exc
        if not inbound.ringing:  # cancelled while the port opened
            await media.close()
            session.close("the call was cancelled")
            raise SipError(f"call {inbound.call_id} was cancelled", status=487)
        inbound.dialog.fire("answer")
        self._send_ok(inbound, inbound.invite)
        call.log.info(
            "call %s from %s answered (%s, RTP %d ↔ %s:%d)",
            inbound.dialog.call_id,
            inbound.dialog.remote_uri,
            inbound.media.codec,
            media.port,
            inbound.offer.address,
            inbound.offer.port,
        )

    def _reject(self, inbound: InboundCall, status: int, reason: str) -> None:
        if not inbound.ringing:
            return
        inbound.dialog.fire("reject")
        self._reply(inbound.invite, inbound.source, status, to_tag=inbound.dialog.local_tag)
        log.info("call %s rejected: %d (%s)", inbound.call_id, status, reason)

    def _send_ok(self, inbound: InboundCall, invite: Request) -> None:
        assert inbound.call is not None
        body = sdp.answer(
            inbound.offer,
            inbound.media,
            self.options.host,
            inbound.call.media.port,
            inbound.session_id,
            inbound.sdp_version,
        )
        headers = [("Contact", f"<{inbound.dialog.local_contact}>"), ("Allow", ALLOW)]
        data = self._reply(
            invite,
            inbound.source,
            200,
            to_tag=inbound.dialog.local_tag,
            headers=headers,
            body=body,
        )
        loop = asyncio.get_running_loop()
        if inbound.ok is not None:
            inbound.ok.stop()
        inbound.ok = Retransmit(data, loop.time(), self.options.timers)
        self._schedule(inbound, inbound.ok)

    def _schedule(self, inbound: InboundCall, ok: Retransmit) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            if ok.stopped:
                return
            data = ok.due(loop.time())
            if data is not None:
                self.send(data, inbound.source)
            if ok.expired and not ok.stopped:
                self._no_ack(inbound)
            else:
                self._schedule(inbound, ok)

        when = ok.deadline if ok.expired else ok.next_at
        handle = loop.call_at(when, fire)
        self._timers.add(handle)

    def _no_ack(self, inbound: InboundCall) -> None:
        log.warning("call %s: no ACK for our 200 within 64*T1: ending it", inbound.dialog.call_id)
        if inbound.call is not None and inbound.dialog.state is State.ACCEPTED:
            inbound.call.session.close("no ACK from the peer")

    def _reinvite(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self._in_dialog(request)
        if inbound.call is None or inbound.dialog.state is not State.CONFIRMED:
            raise SipError("a re-INVITE before the call was set up", status=491)
        offer, media = _negotiate(request)
        inbound.offer, inbound.media = offer, media
        inbound.sdp_version += 1
        inbound.call.media.update(media, (offer.address, offer.port), sending=not offer.on_hold)
        self._send_ok(inbound, request)
        inbound.call.log.info(
            "call %s: re-INVITE: %s, %s", request.call_id, media.codec, offer.direction
        )

    def _ack(self, request: Request) -> None:
        inbound = self.dialogs.get(request.call_id)
        if inbound is None or request.to_tag != inbound.dialog.local_tag:
            return  # the ACK of a non-2xx answer (absorbed), or of nothing we know
        if inbound.ok is not None and request.cseq[0] == _cseq(inbound.ok):
            inbound.ok.stop()
            with contextlib.suppress(DialogError):
                inbound.dialog.fire("ack")

    def _cancel(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self.dialogs.get(request.call_id)
        invite_key = (request.branch or "", f"{addr[0]}:{addr[1]}", "INVITE")
        if inbound is None or key(inbound.invite, inbound.source) != invite_key:
            raise SipError("no INVITE transaction to cancel", status=481, code="no_transaction")
        self._reply(request, addr, 200)
        if inbound.dialog.state in (State.INCOMING, State.EARLY):
            inbound.dialog.fire("cancel")
            self._reply(inbound.invite, inbound.source, 487, to_tag=inbound.dialog.local_tag)
            if inbound.task is not None:
                inbound.task.cancel()
            log.info("call %s cancelled by the caller", request.call_id)

    def _bye(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self._in_dialog(request)
        inbound.dialog.fire("bye")
        if inbound.ok is not None:
            inbound.ok.stop()
        self._reply(request, addr, 200)
        if inbound.call is not None:
            inbound.call.peer_hung_up("the caller hung up (BYE)")

    def _options(self, request: Request, addr: tuple[str, int]) -> None:
        if request.to_tag is not None:
            self._in_dialog(request)
        headers = [
            ("Allow", ALLOW),
            ("Accept", "application/sdp"),
            ("Accept-Language", "en"),
            ("Supported", ""),
        ]
        self._reply(request, addr, 200, headers=headers)

    def _info(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self._in_dialog(request)
        kind = (request.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/dtmf-relay":
            self._reply(request, addr, 415, headers=[("Accept", "application/dtmf-relay")])
            return
        fields = dict(
            line.split("=", 1)
            for line in request.body.decode(errors="replace").splitlines()
            if "=" in line
        )
        digit = fields.get("Signal", "").strip().upper()
        if len(digit) != 1 or digit not in _INFO_DIGITS:
            raise SipError(f"not a keypad digit: {digit[:8]!r}")
        self._reply(request, addr, 200)
        if inbound.call is not None:
            inbound.call.digit(digit)

    def _notify(self, request: Request, addr: tuple[str, int]) -> None:
        self._in_dialog(request)
        self._reply(request, addr, 200)

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

    async def _bye_peer(self, inbound: InboundCall, reason: str) -> None:
        dialog = inbound.dialog
        bye = dialog.request("BYE", self.address, headers=[("Reason", f'SIP;text="{reason}"')])
        response = await self.transact(bye, self.route(dialog))
        log.info("call %s: BYE sent (%s): %d", dialog.call_id, reason, response.status)

    async def _forget(self, inbound: InboundCall) -> None:
        if inbound.ok is not None:
            inbound.ok.stop()
        if inbound.call is not None:
            await inbound.call.media.close()
        self.dialogs.pop(inbound.dialog.call_id, None)
        self.acks.pop(inbound.dialog.call_id, None)
        self.hooks.ended(inbound)

    def hangup(self, call_id: str, reason: str = "hung up by the server") -> bool:
        """End a call from our side (the session closes, BYE follows); False if no such call."""
        inbound = self.dialogs.get(call_id)
        if inbound is None or inbound.call is None:
            return False
        inbound.call.session.close(reason)
        return True

    def _transfer_tool(self, inbound: InboundCall) -> Callable[[str], Awaitable[None]]:
        """The ``transfer_call`` tool's REFER for this call; failures become :class:`ToolError`
        (the model reads them)."""

        async def transfer(target: str) -> None:
            if not target.startswith(("sip:", "sips:", "tel:")) or any(c in target for c in _BAD):
                raise ToolError(f"{target[:80]!r} is not a sip: or tel: URI", tool=_TOOL)
            try:
                status = await self.refer(inbound.call_id, target)
            except SipError as exc:
                raise ToolError(f"cannot transfer: {exc}", tool=_TOOL) from None
            if not 200 <= status < 300:
                raise ToolError(f"the phone refused the transfer (SIP {status})", tool=_TOOL)

        return transfer

    async def refer(self, call_id: str, target: str) -> int:
        """Blind transfer (RFC 3515): REFER the peer to ``target``; on 2xx the call ends (BYE).
        Returns the REFER's status. Cancel-safe."""
        inbound = self.dialogs.get(call_id)
        if inbound is None or inbound.call is None or inbound.dialog.state is not State.CONFIRMED:
            raise SipError(f"no confirmed call {call_id[:64]!r}", status=481, code="no_dialog")
        dialog = inbound.dialog
        refer = dialog.request(
            "REFER",
            self.address,
            headers=[("Refer-To", f"<{target}>"), ("Referred-By", f"<{self.contact}>")],
        )
        response = await self.transact(refer, self.route(dialog))
        log.info("call %s: REFER to %s: %d", call_id, target, response.status)
        if 200 <= response.status < 300:
            inbound.call.session.close(f"transferred to {target}")
        return response.status


def _negotiate(request: Request) -> tuple[sdp.Offer, sdp.Media]:
    kind = (request.get("Content-Type") or "").split(";")[0].strip().lower()
    if not request.body:
        raise SipError("an INVITE without an SDP offer is not supported", status=488)
    if kind != "application/sdp":
        raise SipError(f"Content-Type {kind[:40]!r} is not application/sdp", status=415)
    offer = sdp.parse_offer(request.body)
    return offer, sdp.choose(offer)


def _cseq(ok: Retransmit) -> int:
    """The CSeq number of the 2xx being retransmitted (its ACK carries the same)."""
    return parse(ok.data).cseq[0]


def _reason(exc: SipError) -> str:
    base = REASONS.get(exc.status, "Error")
    return f"{base} ({str(exc)[:80]})".replace("\r", " ").replace("\n", " ")


def _check(message: Request) -> None:
    """The headers every request must have (§8.1.1): :class:`SipError` 400 otherwise."""
    for name in ("Via", "From", "To", "Call-ID"):
        message.need(name)
    _ = message.cseq
