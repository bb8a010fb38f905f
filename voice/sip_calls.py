"""SIP calls in the server's call registry (``calls.py``): the SIP agent's hooks.

Each INVITE that may ring becomes a :class:`SipCallHandle` (``sip_…``) in the registry, which
accepts it at once with the server's defaults, or announces it to the webhook
(``realtime.call.incoming``, with the INVITE's headers) and waits for ``/accept`` or
``/reject``. ``/refer`` is a SIP REFER (blind transfer), ``/hangup`` a BYE (or, while ringing,
480), ``/dtmf`` RFC 4733 keypad events on the call's RTP. The call's session is opened by
the registry (counted, recorded, its transcript kept at the end), at the 8 kHz of G.711.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline.context import new_id
from pipeline.errors import ConfigError, ProtocolError
from pipeline.session import Session
from transports.realtime.connection import RealtimeConnection
from transports.sip.calls import InboundCall
from transports.sip.message import SipError, host_port
from transports.sip.register import RegistrationSettings

from .auth import error_body
from .calls import Call, CallError, CallRegistry, CallState
from .config import SipConfig
from .health import refusal

if TYPE_CHECKING:
    from .server import VoiceServer

log = logging.getLogger("voice.calls")
SIP_RATE = 8000


class SipCallHandle:
    """A SIP call as a :class:`~voice.calls.Call`."""

    transport = "sip"
    audio_rate = SIP_RATE

    def __init__(self, inbound: InboundCall | None, registry: CallRegistry) -> None:
        self._inbound = inbound
        self.call_id = new_id("sip")
        self.headers = inbound.headers if inbound is not None else []
        self.state = CallState.INCOMING
        self.connection: RealtimeConnection | None = None
        self._registry = registry

    @property
    def inbound(self) -> InboundCall:
        if self._inbound is None:
            raise CallError(409, f"call {self.call_id} is not connected yet", "call_state")
        return self._inbound

    async def accept(self, session: dict[str, Any] | None) -> None:
        self._check(CallState.INCOMING)
        conn = self._registry.open_session(self, session)  # (raises CallError)
        self.connection = conn
        try:
            await self.inbound.answer(conn.session)
        except SipError as exc:
            raise CallError(
                409, f"call {self.call_id} cannot be answered: {exc}", "call_ended"
            ) from None
        self.state = CallState.ACTIVE

    async def reject(self, status: int, reason: str) -> None:
        self._check(CallState.INCOMING)
        self.inbound.reject(status, reason)

    async def refer(self, target_uri: str) -> None:
        self._check(CallState.ACTIVE)
        try:
            status = await self.inbound.refer(target_uri)
        except SipError as exc:
            raise CallError(409, str(exc), "call_not_active") from None
        if not 200 <= status < 300:
            raise CallError(
                400, f"the peer refused the transfer (SIP {status})", "refer_failed", "target_uri"
            )

    async def hangup(self, reason: str) -> None:
        self.inbound.hangup(reason)

    async def send_dtmf(self, digits: str) -> None:
        self._check(CallState.ACTIVE)
        call = self.inbound.call
        if call is None:
            raise CallError(409, f"call {self.call_id} has no media yet", "call_state")
        try:
            call.send_digits(digits)
        except SipError as exc:
            status = 400 if exc.code == "invalid_dtmf" else 409
            raise CallError(status, f"cannot send DTMF: {exc}", exc.code, "digits") from None

    def _check(self, state: CallState) -> None:
        if self.state is not state:
            raise CallError(
                409, f"call {self.call_id} is {self.state.value}, not {state.value}", "call_state"
            )


class SipCalls:
    """The SIP agent's :class:`~transports.sip.calls.Hooks`, backed by the call registry."""

    def __init__(self, server: VoiceServer, registry: CallRegistry) -> None:
        self.server = server
        self.registry = registry
        self._handles: dict[str, SipCallHandle] = {}  # by SIP Call-ID

    def admit(self) -> int | None:
        refused = refusal(self.server.admission())
        if refused is None:
            return None if len(self.registry) < self.registry.max_calls else 486
        self.server.metrics.refuse(refused[0])
        return 486 if refused[0] == "capacity" else 503

    async def incoming(self, call: InboundCall) -> None:
        handle = SipCallHandle(call, self.registry)
        try:
            self.registry.add(handle)
        except CallError as exc:
            call.reject(486, str(exc))
            return
        self._handles[call.call_id] = handle
        log.info("SIP call %s is %s (Call-ID %s)", handle.call_id, "ringing", call.call_id[:64])
        await self.registry.incoming(handle)

    def ended(self, call: InboundCall) -> None:
        handle = self._handles.pop(call.call_id, None)
        if handle is not None:
            handle.state = CallState.ENDED
            self.registry.ended(handle)

    def handle(self, sip_call_id: str) -> Call | None:
        return self._handles.get(sip_call_id)

    async def place(self, target: str, session: dict[str, Any] | None) -> dict[str, Any]:
        """Call ``target``; returns the outcome (``answered`` with the ``call_id`` the call
        control routes take, ``busy``, ``declined``, ``no-answer``, ``failed``)."""
        agent = self.server.sip
        if agent is None:
            raise CallError(503, "SIP is off (sip.enabled)", "sip_disabled")
        if session is not None:
            try:
                self.server._describe_session(session)
            except ProtocolError as exc:
                raise CallError(400, str(exc), exc.code, exc.param) from None
        refused = self.admit()
        if refused is not None or len(self.registry) >= self.registry.max_calls:
            raise CallError(503, "the server is at its limit of calls", "server_busy")
        handle = SipCallHandle(None, self.registry)

        def open_session() -> Session:
            self.registry.add(handle)
            try:
                conn = self.registry.open_session(handle, session)
            except CallError:
                handle.state = CallState.ENDED
                self.registry.ended(handle)
                raise
            handle.connection, handle.state = conn, CallState.ACTIVE
            return conn.session

        try:
            outcome, record = await agent.call(target, open_session)
        except SipError as exc:
            raise CallError(400, str(exc), "invalid_target", "to") from None
        if record is not None:
            handle._inbound = record
            self._handles[record.call_id] = handle
        log.info("SIP call to %s: %s (%d)", target[:128], outcome.status, outcome.sip_status)
        return {
            "call_id": handle.call_id if record is not None else None,
            "status": outcome.status,
            "sip_status": outcome.sip_status,
            "reason": outcome.reason,
        }


async def place_call_route(request: web.Request, calls: SipCalls) -> web.Response:
    """``POST /v1/sip/calls`` ``{"to": "sip:…", "instructions": "…"}``: call out; answers
    once the call is answered or has failed, with its outcome."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body must be JSON", "invalid_json")
    if not isinstance(body, dict) or not isinstance(body.get("to"), str):
        return _error(400, "'to' (a sip: URI) is required", "missing_field", "to")
    target = body["to"]
    if not target.startswith("sip:") or len(target) > 512 or any(c in target for c in " <>\r\n"):
        return _error(400, "'to' must be a sip: URI", "invalid_value", "to")
    unknown = set(body) - {"to", "instructions"}
    if unknown:
        return _error(400, f"unknown field {sorted(unknown)[0]!r}", "unknown_parameter")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        return _error(400, "'instructions' must be a string", "invalid_type", "instructions")
    session = None if instructions is None else {"type": "realtime", "instructions": instructions}
    try:
        outcome = await calls.place(target, session)
    except CallError as exc:
        return _error(exc.status, str(exc), exc.code, exc.param)
    return web.json_response(outcome)


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status, text=error_body(message, code, param), content_type="application/json"
    )


def registration_settings(c: SipConfig) -> RegistrationSettings | None:
    """``sip.registrar`` and its credentials; None when there is no registrar."""
    if not c.registrar:
        return None
    host, _ = host_port(c.registrar)
    return RegistrationSettings(
        registrar=c.registrar,
        aor=c.aor or f"sip:{c.user}@{host}",
        username=c.username or c.user,
        password=c.password,
        expires=c.register_expires_s,
    )


def auth_users(text: str) -> dict[str, str]:
    """``sip.auth_users`` (``user:password,…``) as a dict; raises :class:`ConfigError`."""
    users: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        user, colon, password = entry.partition(":")
        if not colon or not user or not password:
            raise ConfigError(f"sip.auth_users: {user[:32]!r} needs user:password")
        users[user] = password
    return users
