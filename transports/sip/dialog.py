"""A SIP dialog (RFC 3261 §12): its identity, CSeqs and state, sans-I/O.

The state is data: :data:`TRANSITIONS` lists every allowed ``(state, event) → state``, and any
other event raises :class:`DialogError`.

::

    inbound  (UAS): INCOMING ─ring─▶ EARLY ─answer─▶ ACCEPTED ─ack─▶ CONFIRMED ─bye─▶ ENDED
    outbound (UAC): CALLING ─ring─▶ EARLY ─answer─▶ CONFIRMED ─bye─▶ ENDED
    INCOMING/EARLY/CALLING ─reject | cancel─▶ ENDED;   ACCEPTED ─bye | timeout─▶ ENDED
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from .message import Request, SipError, param, uri_of


class State(enum.Enum):
    INCOMING = "incoming"
    CALLING = "calling"
    EARLY = "early"
    ACCEPTED = "accepted"
    """2xx sent, its ACK not received yet."""
    CONFIRMED = "confirmed"
    ENDED = "ended"


TRANSITIONS: dict[tuple[State, str], State] = {
    (State.INCOMING, "ring"): State.EARLY,
    (State.INCOMING, "answer"): State.ACCEPTED,
    (State.INCOMING, "reject"): State.ENDED,
    (State.INCOMING, "cancel"): State.ENDED,
    (State.EARLY, "ring"): State.EARLY,
    (State.EARLY, "answer"): State.ACCEPTED,
    (State.EARLY, "reject"): State.ENDED,
    (State.EARLY, "cancel"): State.ENDED,
    (State.CALLING, "ring"): State.EARLY,
    (State.CALLING, "answered"): State.CONFIRMED,
    (State.CALLING, "reject"): State.ENDED,
    (State.CALLING, "cancel"): State.ENDED,
    (State.EARLY, "answered"): State.CONFIRMED,
    (State.ACCEPTED, "ack"): State.CONFIRMED,
    (State.ACCEPTED, "bye"): State.ENDED,
    (State.ACCEPTED, "timeout"): State.ENDED,
    (State.CONFIRMED, "ack"): State.CONFIRMED,  # a re-INVITE's ACK
    (State.CONFIRMED, "bye"): State.ENDED,
    (State.CONFIRMED, "timeout"): State.ENDED,
}


class DialogError(SipError):
    """An event the dialog's state does not allow."""

    def __init__(self, state: State, event: str) -> None:
        super().__init__(f"{event!r} not allowed in state {state.value}", status=500)
        self.state = state
        self.event = event


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


@dataclass(slots=True)
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str
    """Our address-of-record as the dialog's From/To shows it."""
    remote_uri: str
    remote_tag: str | None
    remote_target: str
    """The peer's Contact URI: where in-dialog requests go."""
    local_contact: str
    state: State
    local_cseq: int = field(default_factory=lambda: secrets.randbelow(10_000) + 1)
    remote_cseq: int | None = None
    route: list[str] = field(default_factory=list)
    transport: str = "UDP"
    """What our requests' Via says they travel on: ``UDP`` or ``TCP``."""

    @classmethod
    def from_invite(cls, invite: Request, local_contact: str, transport: str = "UDP") -> Dialog:
        """The UAS side of the dialog an INVITE creates (it came on ``transport``)."""
        contact = invite.get("Contact")
        from_ = invite.need("From")
        return cls(
            call_id=invite.call_id,
            local_tag=new_tag(),
            local_uri=uri_of(invite.need("To")),
            remote_uri=uri_of(from_),
            remote_tag=param(from_, "tag"),
            remote_target=uri_of(contact) if contact else uri_of(from_),
            local_contact=local_contact,
            state=State.INCOMING,
            remote_cseq=invite.cseq[0],
            route=[v for v in invite.get_all("Record-Route")],
            transport=transport,
        )

    def fire(self, event: str) -> State:
        """Apply ``event``; raises :class:`DialogError` where the state does not allow it."""
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            raise DialogError(self.state, event)
        self.state = new
        return new

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    def matches(self, request: Request) -> bool:
        """Whether an in-dialog request (its To tag set) belongs to this dialog."""
        return (
            request.call_id == self.call_id
            and request.to_tag == self.local_tag
            and (self.remote_tag is None or request.from_tag == self.remote_tag)
        )

    def check_cseq(self, request: Request) -> None:
        """Requests from the peer must come in CSeq order (§12.2.2): 500 otherwise."""
        number, method = request.cseq
        if method in ("ACK", "CANCEL"):
            return
        if self.remote_cseq is not None and number <= self.remote_cseq:
            raise SipError(f"CSeq {number} not above {self.remote_cseq}", status=500)
        self.remote_cseq = number

    def request(
        self,
        method: str,
        via: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        cseq: int | None = None,
    ) -> Request:
        """A request within the dialog (BYE, re-INVITE, REFER, ACK: pass the INVITE's ``cseq``);
        ``via`` is our sent-by (``host:port``)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        remote = f"<{self.remote_uri}>"
        if self.remote_tag:
            remote += f";tag={self.remote_tag}"
        request = Request(
            method=method,
            uri=self.remote_target,
            headers=[
                ("Via", f"SIP/2.0/{self.transport} {via};branch={new_branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<{self.local_uri}>;tag={self.local_tag}"),
                ("To", remote),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
                ("Contact", f"<{self.local_contact}>"),
                *[("Route", r) for r in self.route],
                *(headers or []),
            ],
            body=body,
        )
        return request
