"""Registration with a registrar (RFC 3261 §10): so calls to a PBX extension or a trunk's number
reach the agent. One task per agent: REGISTER, answer a digest challenge (401/407) once per
nonce, and refresh before the binding expires — half-way, or 30 s before it, whichever is later.
A failure (an error response, no answer, a challenge we cannot meet) is logged and retried after
``retry_s``; the state is kept on :class:`Registration` for health checks and tests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import digest
from .dialog import new_branch
from .message import Request, Response, SipError, host_port, param, uri_of

if TYPE_CHECKING:
    from .agent import SipAgent

log = logging.getLogger("voice.transport.sip")


@dataclass(slots=True)
class RegistrationSettings:
    registrar: str
    """The registrar's URI (``sip:pbx.example.com``)."""
    aor: str
    """Our address of record (``sip:1001@pbx.example.com``)."""
    username: str = ""
    password: str = ""
    expires: int = 3600
    retry_s: float = 30.0


@dataclass(slots=True)
class Registration:
    settings: RegistrationSettings
    registered: bool = False
    expires: int = 0
    """Seconds the registrar granted last time."""
    refreshes: int = 0
    """Successful REGISTERs so far."""
    last_error: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    tag: str = field(default_factory=lambda: secrets.token_hex(6))
    cseq: int = 0

    def refresh_in(self) -> float:
        return max(self.expires / 2, self.expires - 30.0, 1.0)


def _request(agent: SipAgent, reg: Registration, auth: tuple[str, str] | None) -> Request:
    s = reg.settings
    reg.cseq += 1
    headers = [
        ("Via", f"SIP/2.0/UDP {agent.address};branch={new_branch()};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<{s.aor}>;tag={reg.tag}"),
        ("To", f"<{s.aor}>"),
        ("Call-ID", reg.call_id),
        ("CSeq", f"{reg.cseq} REGISTER"),
        ("Contact", f"<{agent.contact}>"),
        ("Expires", str(s.expires)),
        ("User-Agent", agent.options.user_agent),
    ]
    if auth is not None:
        headers.append(auth)
    return Request(method="REGISTER", uri=s.registrar, headers=headers)


async def register_once(agent: SipAgent, reg: Registration) -> Response:
    """One REGISTER, with a second one answering a digest challenge; returns the final answer.
    Raises :class:`SipError` for a challenge we cannot answer. Cancel-safe."""
    s = reg.settings
    destination = host_port(s.registrar)
    response = await agent.transact(_request(agent, reg, None), destination)
    if response.status in (401, 407):
        name = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        if not s.username:
            raise SipError(f"the registrar wants credentials ({response.status})")
        challenge = digest.parse_challenge(response.need(name))
        value = digest.authorization(
            challenge, username=s.username, password=s.password, method="REGISTER", uri=s.registrar
        )
        header = "Authorization" if response.status == 401 else "Proxy-Authorization"
        response = await agent.transact(_request(agent, reg, (header, value)), destination)
    if 200 <= response.status < 300:
        reg.expires = _granted(response, agent.contact, s.expires)
    return response


def _granted(response: Response, contact: str, asked: int) -> int:
    """The expiry the registrar gave our binding: its Contact's ``expires``, else Expires."""
    for value in response.get_all("Contact"):
        for one in value.split(","):
            if uri_of(one) == contact:
                expires = param(one, "expires")
                if expires and expires.isdigit():
                    return int(expires)
    header = response.get("Expires")
    return int(header) if header and header.strip().isdigit() else asked


async def keep_registered(agent: SipAgent, reg: Registration) -> None:
    """Register, then refresh until cancelled. Cancel-safe."""
    while True:
        try:
            response = await register_once(agent, reg)
            ok = 200 <= response.status < 300
            reg.last_error = "" if ok else f"{response.status} {response.reason}"
        except SipError as exc:
            ok, reg.last_error = False, str(exc)
        reg.registered = ok
        if ok:
            reg.refreshes += 1
            log.info("registered at %s for %d s", reg.settings.registrar, reg.expires)
        else:
            log.warning("registration at %s failed: %s", reg.settings.registrar, reg.last_error)
        reg.changed.set()
        reg.changed = asyncio.Event()
        await asyncio.sleep(reg.refresh_in() if ok else reg.settings.retry_s)
