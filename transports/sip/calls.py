"""The calls on the SIP agent (``agent.py``): each one a dialog, from INVITE to BYE.

Inbound, for an INVITE: 486 when the server is at capacity (503 while it is not ready), 488
when the offer has no codec we speak, otherwise 100 Trying, 180 Ringing and, once the session
and its RTP port are open, 200 OK with the SDP answer, retransmitted on the RFC 3261 timers
until the ACK comes (no ACK within 64·T1: BYE). In a dialog: BYE (200, the call ends), re-INVITE
(hold, resume, a codec change: 200 with a new answer), INFO (``application/dtmf-relay`` keypad
digits), NOTIFY (a transfer's progress). CANCEL before the answer: 200, then 487 on the INVITE.
A request for a dialog we do not have: 481. Optional digest authentication of new INVITEs (401
with a challenge, 403 for wrong credentials; ``digest.py``).

An answered outbound call (``outbound.py``) is :meth:`Calls.adopt`-ed and served the same way.
The server's decisions (may a call ring, accept or reject it, what to do when it ends) are its
:class:`Hooks`; nothing here knows the call registry. The socket, the transactions and the
routing of our requests are the agent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pipeline.errors import ToolError
from pipeline.session import Session
from pipeline.tasks import cancel_and_wait

from . import digest, sdp
from .call import SipCall
from .dialog import Dialog, DialogError, State
from .media import RtpMedia
from .message import Request, SipError, parse
from .tcp import TcpPeer
from .transaction import Retransmit, key

if TYPE_CHECKING:
    from .agent import SipAgent

log = logging.getLogger("voice.transport.sip")
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, REFER"
_INFO_DIGITS = "0123456789*#ABCD"
_TOOL = "transfer_call"
_BAD = ' <>"\r\n'


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
        await self.agent.calls.answer(self, session)

    def reject(self, status: int, reason: str) -> None:
        """Refuse the ringing call with ``status`` (4xx-6xx); does nothing once it is not."""
        self.agent.calls.reject(self, status, reason)

    def hangup(self, reason: str) -> None:
        """End the call from our side, whatever its state (BYE, or a 480 while ringing)."""
        if self.call is not None:
            self.call.session.close(reason)
        elif self.ringing:
            self.reject(480, reason)

    async def refer(self, target: str) -> int:
        """Blind transfer (REFER); see :meth:`SipAgent.refer`."""
        return await self.agent.refer(self.call_id, target)


class Calls:
    """Every dialog of one :class:`~.agent.SipAgent`, by Call-ID (one dialog each: we never
    fork), and what its in-dialog requests do."""

    def __init__(self, agent: SipAgent) -> None:
        self.agent = agent
        self.options = agent.options
        self.hooks = agent.hooks
        self.dialogs: dict[str, InboundCall] = {}
        self._nonce_key = secrets.token_bytes(16)
        self._timers: set[asyncio.TimerHandle] = set()

    async def close(self, reason: str) -> None:
        """Hang up every call (BYE, sent once: no time to wait for answers; 503 to a ringing
        one) and wait for their tasks."""
        for inbound in list(self.dialogs.values()):
            dialog = inbound.dialog
            if inbound.ringing:
                self.reject(inbound, 503, reason)
            elif dialog.state in (State.ACCEPTED, State.CONFIRMED):
                dialog.fire("bye")
                bye = dialog.request(
                    "BYE", self.agent.address, headers=[("Reason", f'SIP;text="{reason}"')]
                )
                self.agent.send_in_dialog(dialog, bye)
            if inbound.call is not None:
                inbound.call.session.close(reason)
        await cancel_and_wait([i.task for i in self.dialogs.values() if i.task is not None])
        for handle in self._timers:
            handle.cancel()

    def in_dialog(self, request: Request) -> InboundCall:
        inbound = self.dialogs.get(request.call_id)
        if inbound is None or not inbound.dialog.matches(request) or inbound.dialog.ended:
            raise SipError("no such dialog", status=481, code="no_dialog")
        inbound.dialog.check_cseq(request)
        return inbound

    def invite(self, request: Request, addr: tuple[str, int]) -> None:
        if request.to_tag is not None:
            self._reinvite(request, addr)
            return
        if request.call_id in self.dialogs:
            raise SipError("a second INVITE for this Call-ID", status=482, code="loop")
        if self.options.auth_users and not self._authenticated(request, addr):
            return
        refused = self.hooks.admit() if len(self.dialogs) < self.options.max_dialogs else 486
        if refused is not None:
            self.agent.reply(request, addr, refused)
            log.info("call %s from %s refused: %d", request.call_id, addr[0], refused)
            return
        offer, media = _negotiate(request)
        self.agent.reply(request, addr, 100)
        transport = "TCP" if isinstance(addr, TcpPeer) else "UDP"
        dialog = Dialog.from_invite(request, self.agent.contact_for(addr), transport)
        inbound = InboundCall(self.agent, request, addr, dialog, offer, media)
        self.dialogs[dialog.call_id] = inbound
        dialog.fire("ring")
        self.agent.reply(request, addr, 180, to_tag=dialog.local_tag)
        inbound.task = self.agent.spawn(
            self._run_inbound(inbound), f"sip-call-{dialog.call_id[:32]}"
        )

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
        self.agent.reply(request, addr, 401, headers=[("WWW-Authenticate", challenge)])
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
                    self.reject(inbound, 480, "not answered")
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

        record.task = self.agent.spawn(run(record.call), f"sip-call-{record.call_id[:32]}")

    async def answer(self, inbound: InboundCall, session: Session) -> None:
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
            echo_gate_db=self.options.echo_gate_db,
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

    def reject(self, inbound: InboundCall, status: int, reason: str) -> None:
        if not inbound.ringing:
            return
        inbound.dialog.fire("reject")
        self.agent.reply(inbound.invite, inbound.source, status, to_tag=inbound.dialog.local_tag)
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
        data = self.agent.reply(
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
                self.agent.send(data, inbound.source)
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
        inbound = self.in_dialog(request)
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

    def ack(self, request: Request) -> None:
        inbound = self.dialogs.get(request.call_id)
        if inbound is None or request.to_tag != inbound.dialog.local_tag:
            return  # the ACK of a non-2xx answer (absorbed), or of nothing we know
        if inbound.ok is not None and request.cseq[0] == _cseq(inbound.ok):
            inbound.ok.stop()
            with contextlib.suppress(DialogError):
                inbound.dialog.fire("ack")

    def cancel(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self.dialogs.get(request.call_id)
        invite_key = (request.branch or "", f"{addr[0]}:{addr[1]}", "INVITE")
        if inbound is None or key(inbound.invite, inbound.source) != invite_key:
            raise SipError("no INVITE transaction to cancel", status=481, code="no_transaction")
        self.agent.reply(request, addr, 200)
        if inbound.dialog.state in (State.INCOMING, State.EARLY):
            inbound.dialog.fire("cancel")
            self.agent.reply(inbound.invite, inbound.source, 487, to_tag=inbound.dialog.local_tag)
            if inbound.task is not None:
                inbound.task.cancel()
            log.info("call %s cancelled by the caller", request.call_id)

    def bye(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self.in_dialog(request)
        inbound.dialog.fire("bye")
        if inbound.ok is not None:
            inbound.ok.stop()
        self.agent.reply(request, addr, 200)
        if inbound.call is not None:
            inbound.call.peer_hung_up("the caller hung up (BYE)")

    def info(self, request: Request, addr: tuple[str, int]) -> None:
        inbound = self.in_dialog(request)
        kind = (request.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/dtmf-relay":
            self.agent.reply(request, addr, 415, headers=[("Accept", "application/dtmf-relay")])
            return
        fields = dict(
            line.split("=", 1)
            for line in request.body.decode(errors="replace").splitlines()
            if "=" in line
        )
        digit = fields.get("Signal", "").strip().upper()
        if len(digit) != 1 or digit not in _INFO_DIGITS:
            raise SipError(f"not a keypad digit: {digit[:8]!r}")
        self.agent.reply(request, addr, 200)
        if inbound.call is not None:
            inbound.call.digit(digit)

    def notify(self, request: Request, addr: tuple[str, int]) -> None:
        self.in_dialog(request)
        self.agent.reply(request, addr, 200)

    async def _bye_peer(self, inbound: InboundCall, reason: str) -> None:
        dialog = inbound.dialog
        bye = dialog.request(
            "BYE", self.agent.address, headers=[("Reason", f'SIP;text="{reason}"')]
        )
        response = await self.agent.transact(bye, self.agent.route(dialog))
        log.info("call %s: BYE sent (%s): %d", dialog.call_id, reason, response.status)

    async def _forget(self, inbound: InboundCall) -> None:
        if inbound.ok is not None:
            inbound.ok.stop()
        if inbound.call is not None:
            await inbound.call.media.close()
        self.dialogs.pop(inbound.dialog.call_id, None)
        self.agent.acks.pop(inbound.dialog.call_id, None)
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
            self.agent.address,
            headers=[("Refer-To", f"<{target}>"), ("Referred-By", f"<{self.agent.contact}>")],
        )
        response = await self.agent.transact(refer, self.agent.route(dialog))
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
