"""Calls out: an INVITE with our offer, its outcome, and the call once answered.

:func:`place_call` sends the INVITE (retransmitted on timer A until a response), waits up to
``ring_timeout`` for a final answer — longer means CANCEL, and the outcome ``no-answer`` — and
ACKs it. 2xx: the answer's SDP sets the codec, the session starts (``open_session``), the
outcome is ``answered`` and the call runs in the background like an inbound one (BYE either
side, re-INVITE, DTMF). 486/600 → ``busy``, 603 → ``declined``, 408/480/487 → ``no-answer``,
anything else → ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.session import Session

from . import sdp
from .call import SipCall
from .calls import InboundCall
from .dialog import Dialog, State, new_tag
from .media import RtpMedia
from .message import Request, Response, SipError, host_port, uri_of
from .tcp import TcpPeer, uri_transport
from .transaction import Retransmit

if TYPE_CHECKING:
    from .agent import SipAgent

log = logging.getLogger("voice.transport.sip")
OUTCOMES = {
    486: "busy",
    600: "busy",
    603: "declined",
    408: "no-answer",
    480: "no-answer",
    487: "no-answer",
}


@dataclass(slots=True, frozen=True)
class Outcome:
    status: str
    """``answered``, ``busy``, ``declined``, ``no-answer`` or ``failed``."""
    sip_status: int
    call_id: str
    reason: str = ""


async def place_call(
    agent: SipAgent, target: str, open_session: Callable[[], Session]
) -> tuple[Outcome, InboundCall | None]:
    """Call ``target`` (a ``sip:`` URI); returns the outcome, and the live call if answered.
    Cancel-safe: a cancelled call is CANCELled."""
    host_port(target)  # a bad URI raises SipError now
    options = agent.options
    local = f"sip:{options.user}@{agent.address}"
    transport = uri_transport(target)  # (``;transport=tcp``: TCP, else UDP)
    dialog = Dialog(
        call_id=f"{secrets.token_hex(10)}@{options.host}",
        local_tag=new_tag(),
        local_uri=local,
        remote_uri=target,
        remote_tag=None,
        remote_target=target,
        local_contact=agent.contact + (";transport=tcp" if transport == "TCP" else ""),
        state=State.CALLING,
        transport=transport,
    )
    media = RtpMedia(
        sdp.Media(0, 101),
        (host_port(target)[0], 0),
        on_audio=lambda _frame, _wire: None,
        on_dtmf=lambda _: None,
        on_sent=lambda _: None,
        jitter_depth=options.jitter_depth,
    )
    port = await media.open(options.host)
    session_id = secrets.randbelow(2**31)
    invite = dialog.request(
        "INVITE",
        agent.address,
        headers=[("Content-Type", "application/sdp"), ("User-Agent", options.user_agent)],
        body=sdp.offer(options.host, port, session_id),
    )
    try:
        response = await _ring(agent, invite, dialog)
    except BaseException:
        await media.close()
        raise
    if not 200 <= response.status < 300:
        await media.close()
        status = OUTCOMES.get(response.status, "failed")
        return Outcome(status, response.status, dialog.call_id, response.reason), None
    try:
        offer, chosen = _answered(agent, dialog, invite, response)
    except SipError as exc:  # an answer we cannot use: end the call at once
        await media.close()
        dialog.fire("answered")
        agent.send_in_dialog(dialog, dialog.request("BYE", agent.address))
        return Outcome("failed", 488, dialog.call_id, str(exc)), None
    media.update(chosen, (offer.address, offer.port), sending=not offer.on_hold)
    record = InboundCall(agent, invite, agent.route(dialog), dialog, offer, chosen)
    record.session_id = session_id
    try:
        session = open_session()
    except Exception as exc:  # (the server filled up while it rang): hang up at once
        await media.close()
        agent.send_in_dialog(dialog, dialog.request("BYE", agent.address))
        dialog.fire("bye")
        return Outcome("failed", 503, dialog.call_id, f"no session: {exc}"), None
    record.call = SipCall(
        dialog,
        session,
        media,
        peer=target,
        echo_cancellation=options.echo_cancellation,
        echo_gate_db=options.echo_gate_db,
    )
    agent.adopt(record)
    return Outcome("answered", response.status, dialog.call_id), record


async def _ring(agent: SipAgent, invite: Request, dialog: Dialog) -> Response:
    """Send the INVITE and wait for its final response (CANCEL after ``ring_timeout``)."""
    destination = agent.route(dialog)
    branch = invite.branch or ""
    queue: asyncio.Queue[Response] = asyncio.Queue(maxsize=32)
    agent.clients[branch] = queue
    loop = asyncio.get_running_loop()
    data = invite.encode()
    again = Retransmit(data, loop.time(), agent.options.timers, cap=False)
    if isinstance(destination, TcpPeer):  # reliable: no timer A, only B (§17.1.1.2)
        again.next_at = again.deadline
    agent.send(data, destination)
    ring_until = loop.time() + agent.options.ring_timeout
    cancelled = False
    try:
        while True:
            wake = min(again.next_at if not again.stopped else ring_until, ring_until)
            try:
                async with asyncio.timeout(max(wake - loop.time(), 0.0)):
                    response = await queue.get()
            except TimeoutError:
                if loop.time() >= ring_until and not cancelled:
                    cancelled = True
                    agent.send(_cancel(invite).encode(), destination)
                    ring_until = loop.time() + agent.options.timers.give_up
                elif loop.time() >= ring_until:
                    return Response(status=408, reason="Request Timeout (no final answer)")
                elif again.expired:
                    return Response(status=408, reason="Request Timeout (no answer)")
                elif (resend := again.due(loop.time())) is not None:
                    agent.send(resend, destination)
                continue
            again.stop()
            if response.cseq[1] != "INVITE":
                continue  # the 200 to our CANCEL
            if response.status < 200:
                if response.to_tag and dialog.state is State.CALLING:
                    dialog.fire("ring")
                continue
            if response.status >= 300:
                dialog.fire("reject")
                agent.send(_ack_failure(invite, response).encode(), destination)
            return response
    except BaseException:
        if not cancelled and dialog.state in (State.CALLING, State.EARLY):
            agent.send(_cancel(invite).encode(), destination)
        raise
    finally:
        agent.clients.pop(branch, None)


def _answered(
    agent: SipAgent, dialog: Dialog, invite: Request, response: Response
) -> tuple[sdp.Offer, sdp.Media]:
    """A 2xx: the dialog takes the peer's tag and Contact, and the ACK goes out."""
    dialog.remote_tag = response.to_tag
    contact = response.get("Contact")
    if contact:
        dialog.remote_target = uri_of(contact)
    dialog.route = list(reversed(response.get_all("Record-Route")))
    ack = dialog.request("ACK", agent.address, cseq=invite.cseq[0])
    agent.acks[dialog.call_id] = (ack.encode(), agent.route(dialog))
    agent.send_in_dialog(dialog, ack)
    dialog.fire("answered")
    offer = sdp.parse_offer(response.body)
    return offer, sdp.choose(offer)


def _cancel(invite: Request) -> Request:
    """CANCEL (§9.1): the INVITE's Request-URI, Via, From, To, Call-ID and CSeq number."""
    keep = ("via", "from", "to", "call-id", "route", "max-forwards")
    headers = [(k, v) for k, v in invite.headers if k.lower() in keep]
    headers.append(("CSeq", f"{invite.cseq[0]} CANCEL"))
    return Request(method="CANCEL", uri=invite.uri, headers=headers)


def _ack_failure(invite: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response (§17.1.1.3): same branch, the response's To."""
    keep = ("via", "from", "call-id", "route", "max-forwards")
    headers = [(k, v) for k, v in invite.headers if k.lower() in keep]
    headers += [("To", response.need("To")), ("CSeq", f"{invite.cseq[0]} ACK")]
    return Request(method="ACK", uri=invite.uri, headers=headers)
