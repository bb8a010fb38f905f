"""OpenAI-style call control over the server's live calls (the registry: ``calls.py``).

Routes (added by :meth:`CallControl.add_routes`), each answering OpenAI's error body on failure:

- ``POST /v1/realtime/calls/{call_id}/accept`` — a Realtime session object (``{"type":
  "realtime", "instructions": …}``, validated as ``session.update`` is): the incoming call is
  answered with it. 200 empty; 400 for a refused configuration, 404 unknown call, 409 when the
  call is not incoming.
- ``…/reject`` — ``{"status_code": 486}`` (optional, 400-699; 603 by default).
- ``…/refer`` — ``{"target_uri": "sip:…" | "tel:…"}``: a blind transfer (SIP calls).
- ``…/hangup`` — ends the call, whatever its state.
- ``…/dtmf`` — ``{"digits": "123#"}`` (1 to 32 of ``0-9 * # A-D``): the keys are pressed on the
  line, in order (SIP: RFC 4733 events, 100 ms each). 400 for other keys, 409 for a call whose
  transport cannot send them (WebRTC; Twilio, whose Media Streams carry no keypad to the call)
  or whose phone did not offer ``telephone-event``. (Not OpenAI's: an extension.)
- ``GET /v1/realtime?call_id=…`` — a Realtime WebSocket that watches and steers the call
  (``transports/watcher.py``), whatever transport carries its audio.
- ``POST /v1/twilio/voice`` — Twilio's call webhook, answered with ``<Connect><Stream>``
  (``transports/twilio_webhook.py``); its signature is checked by the gate (``auth.py``).

A call made with an API key (a WebRTC call) is controlled with that key only; a phone call
(SIP, Twilio) by any key the server takes. The WebRTC and Twilio calls are :class:`Call`\\ s
here; SIP calls are the SIP transport's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline import messages as m
from pipeline.context import new_id
from pipeline.errors import ProtocolError
from pipeline.session import Session
from transports import twilio_webhook as twiml
from transports.realtime.connection import RealtimeConnection
from transports.realtime.validate import LONE_SURROGATE, lone_surrogate
from transports.sip.dtmf import DIGITS, MAX_DIGITS
from transports.twilio import TwilioStream
from transports.watcher import serve_watcher
from transports.webrtc import WebRtcCall

from .auth import Principal, error_body, principal_of
from .calls import (
    DEFAULT_REJECT_STATUS,
    Call,
    CallError,
    CallRegistry,
    CallState,
    WebhookSettings,
)
from .health import refusal

if TYPE_CHECKING:
    from .server import VoiceServer

log = logging.getLogger("voice.calls")
MAX_BODY_BYTES = 64 << 10
MAX_URI_CHARS = 512
_URI = re.compile(r"(?:sips?|tel):[!#-;=?-~]+")
"""A transfer target: printable ASCII but space, ``"``, ``<`` and ``>`` (it goes into a SIP
``Refer-To`` header as is)."""
PHONE_RATE = 8000


class CallControl:
    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        c = server.config.calls
        self.registry = CallRegistry(
            open_session=self._open_session,
            validate=self._validate,
            on_end=self._ended,
            webhook=WebhookSettings(
                url=c.webhook_url,
                secret=c.webhook_secret,
                accept_timeout=c.accept_timeout,
                delivery_timeout=c.webhook_timeout,
            ),
            max_calls=c.max_calls,
        )
        self._opened: set[str] = set()  # sessions opened here (SIP): ended here too

    def add_routes(self, app: web.Application) -> None:
        base = "/v1/realtime/calls/{call_id}"
        app.router.add_post(f"{base}/accept", self._accept)
        app.router.add_post(f"{base}/reject", self._reject)
        app.router.add_post(f"{base}/refer", self._refer)
        app.router.add_post(f"{base}/hangup", self._hangup)
        app.router.add_post(f"{base}/dtmf", self._dtmf)
        app.router.add_post("/v1/twilio/voice", self._twilio_voice)

    # ------------------------------------------------------------ the registry's hooks

    def _open_session(self, call: Call, session: dict[str, Any] | None) -> RealtimeConnection:
        """A new session for a call (SIP): counted, recorded, configured."""
        srv = self.server
        try:
            srv._check_capacity()
        except web.HTTPServiceUnavailable as exc:
            raise CallError(503, exc.text or "the server is full", "server_busy") from None
        s = srv.new_session()
        s.settings.apology = srv.config.twilio.apology  # a phone has no error channel
        conn = self._connection(s, call.audio_rate)
        if session is not None:
            try:
                conn.apply_session(session)
            except ProtocolError as exc:
                s.close(f"bad session configuration: {exc}")
                raise CallError(400, str(exc), exc.code, exc.param) from None
        srv._record(s, call.transport)
        srv.sessions[s.id] = s
        srv.metrics.opened(s.id, call.transport)
        self._opened.add(s.id)
        return conn

    def _connection(self, session: Session, rate: int) -> RealtimeConnection:
        config = self.server.realtime_config(session.settings)
        config.fixed_output_rate = rate
        session.settings.output_rate = rate
        return RealtimeConnection(
            session, config, max_event_bytes=self.server.config.server.max_event_bytes
        )

    def _validate(self, session: dict[str, Any]) -> None:
        try:
            self.server._describe_session(session)
        except ProtocolError as exc:
            raise CallError(400, str(exc), exc.code, exc.param) from None

    def _ended(self, call: Call) -> None:
        conn = call.connection
        if conn is not None and conn.session.id in self._opened:
            self._opened.discard(conn.session.id)
            if self.server.sessions.pop(conn.session.id, None) is not None:
                self.server._keep_transcript(conn.session)

    # ------------------------------------------------------------ transports' calls

    def webrtc_answered(self, call: WebRtcCall) -> None:
        """A WebRTC call is live (born accepted); refused past ``calls.max_calls`` (503)."""
        try:
            self.registry.add(WebRtcCallHandle(call))
        except CallError as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None

    def webrtc_ended(self, call: WebRtcCall) -> None:
        with contextlib.suppress(CallError):  # (refused past max_calls: never added)
            handle = self.registry.get(call.id)
            if isinstance(handle, WebRtcCallHandle):
                handle.state = CallState.ENDED
                self.registry.ended(handle)

    def twilio_started(self, stream: TwilioStream) -> None:
        """A Twilio stream's ``start``: it becomes a call (``tw_…``), announced to the webhook
        if there is one (held until accepted), configured by its custom parameters."""
        call = TwilioCall(stream, self._connection(stream.session, PHONE_RATE), self.registry)
        try:
            self.registry.add(call)
        except CallError as exc:
            stream.session.close(f"call refused: {exc}")
            return
        call.configure(twiml.session_settings(stream.custom_parameters))
        if self.registry.webhook.url:
            stream.held = True
            call.decide(self.registry.incoming(call))
        else:
            call.state = CallState.ACTIVE

    # ------------------------------------------------------------ routes

    def _call(self, request: web.Request, call_id: str | None = None) -> Call:
        call = self.registry.get(request.match_info["call_id"] if call_id is None else call_id)
        conn = call.connection
        owner = self.server.owners.get(conn.session) if conn is not None else None
        if not _may_control(owner, principal_of(request)):
            raise CallError(404, f"no live call {call.call_id!r}", "call_not_found", "call_id")
        return call

    async def _accept(self, request: web.Request) -> web.Response:
        return await _answer(self._do_accept, request)

    async def _do_accept(self, request: web.Request) -> None:
        call = self._call(request)
        body = await _json_body(request, required=True)
        await self.registry.accept(call.call_id, body)
        log.info("call %s accepted by %s", call.call_id, request.remote)

    async def _reject(self, request: web.Request) -> web.Response:
        return await _answer(self._do_reject, request)

    async def _do_reject(self, request: web.Request) -> None:
        call = self._call(request)
        body = await _json_body(request, required=False)
        _only(body, {"status_code"})
        status = body.get("status_code", DEFAULT_REJECT_STATUS)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 699:
            raise CallError(
                400,
                f"status_code must be a SIP status from 400 to 699, got {str(status)[:20]!r}",
                "invalid_value",
                "status_code",
            )
        await self.registry.reject(call.call_id, status)

    async def _refer(self, request: web.Request) -> web.Response:
        return await _answer(self._do_refer, request)

    async def _do_refer(self, request: web.Request) -> None:
        call = self._call(request)
        body = await _json_body(request, required=True)
        _only(body, {"target_uri"})
        target = body.get("target_uri")
        if not isinstance(target, str) or len(target) > MAX_URI_CHARS or not _URI.fullmatch(target):
            raise CallError(
                400,
                "target_uri must be a sip:, sips: or tel: URI (no spaces, at most"
                f" {MAX_URI_CHARS} characters)",
                "invalid_value",
                "target_uri",
            )
        await call.refer(target)

    async def _hangup(self, request: web.Request) -> web.Response:
        return await _answer(self._do_hangup, request)

    async def _do_hangup(self, request: web.Request) -> None:
        await self._call(request).hangup("hung up by the client")

    async def _dtmf(self, request: web.Request) -> web.Response:
        return await _answer(self._do_dtmf, request)

    async def _do_dtmf(self, request: web.Request) -> None:
        call = self._call(request)
        body = await _json_body(request, required=True)
        _only(body, {"digits"})
        digits = body.get("digits")
        if (
            not isinstance(digits, str)
            or not 1 <= len(digits) <= MAX_DIGITS
            or any(d not in DIGITS for d in digits)
        ):
            raise CallError(
                400,
                f"digits must be 1 to {MAX_DIGITS} keypad keys (0-9, *, #, A-D), got"
                f" {str(digits)[:40]!r}",
                "invalid_value",
                "digits",
            )
        await call.send_dtmf(digits)
        log.info("call %s: DTMF %s sent for %s", call.call_id, digits, request.remote)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/realtime?call_id=…``."""
        try:
            call = self._call_by_query(request)
        except CallError as exc:
            raise _http_error(exc) from None
        conn = call.connection
        assert conn is not None
        watcher = RealtimeConnection(
            conn.session,
            conn.config,
            max_event_bytes=self.server.config.server.max_event_bytes,
            extensions=request.query.get("x_voice_events") == "1",
        )
        watcher.clear_output = conn.clear_output
        s = self.server.config.server
        return await serve_watcher(
            request,
            watcher,
            call_id=call.call_id,
            max_frame_bytes=s.max_frame_bytes,
            max_pending=self.server.config.calls.max_watcher_events,
            heartbeat=s.heartbeat_s,
        )

    def _call_by_query(self, request: web.Request) -> Call:
        call_id = request.query.get("call_id", "")
        call = self._call(request, call_id)
        if call.connection is None or call.state is not CallState.ACTIVE:
            raise CallError(
                409, f"call {call_id} is {call.state.value}: accept it first", "call_not_active"
            )
        return call

    async def _twilio_voice(self, request: web.Request) -> web.Response:
        """Twilio's voice webhook: TwiML that connects the call to the media stream, or, while
        the server takes no new call, rejects it as busy."""
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            params = twiml.stream_parameters(fields, request.query)
        except ProtocolError as exc:
            raise web.HTTPBadRequest(
                text=error_body(str(exc), exc.code, exc.param), content_type="application/json"
            ) from None
        refused = self._refusal()
        if refused is not None:
            log.warning("Twilio call %s refused (busy): %s", params.get("CallSid"), refused)
            return web.Response(text=twiml.reject_twiml(), content_type="text/xml")
        secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
        url = twiml.stream_url(self.server.config.twilio.public_url, request.host, secure)
        log.info(
            "Twilio call %s from %s: connecting to %s", params.get("CallSid"), request.remote, url
        )
        return web.Response(text=twiml.connect_twiml(url, params), content_type="text/xml")

    def _refusal(self) -> str | None:
        """Why a new call cannot be taken now (``health.py``, or the registry full), or None."""
        refused = refusal(self.server.admission())
        if refused is not None:
            self.server.metrics.refuse(refused[0])
            return refused[1]
        if len(self.registry) >= self.registry.max_calls:
            return f"at the limit of {self.registry.max_calls} calls"
        return None


# ---------------------------------------------------------------- the calls


class WebRtcCallHandle:
    """A WebRTC call as a :class:`Call`: born accepted, hung up by closing its peer connection;
    it cannot be rejected (it is answered already) nor transferred (no SIP leg)."""

    transport = "webrtc"
    audio_rate = 48_000

    def __init__(self, call: WebRtcCall) -> None:
        self.call = call
        self.call_id = call.id
        self.headers: list[tuple[str, str]] = []
        self.state = CallState.ACTIVE
        self.connection: RealtimeConnection | None = call.conn

    async def accept(self, session: dict[str, Any] | None) -> None:
        raise CallError(409, "a WebRTC call is accepted when it is created", "call_not_incoming")

    async def reject(self, status: int, reason: str) -> None:
        raise CallError(409, "a WebRTC call is accepted when it is created", "call_not_incoming")

    async def refer(self, target_uri: str) -> None:
        raise CallError(
            400,
            "a WebRTC call cannot be transferred: refer is for SIP calls",
            "refer_not_supported",
        )

    async def hangup(self, reason: str) -> None:
        await self.call.close(reason)

    async def send_dtmf(self, digits: str) -> None:
        raise CallError(
            409,
            "a WebRTC call has no telephone line to press keys on: dtmf is for SIP calls",
            "dtmf_not_supported",
        )


class TwilioCall:
    """A Twilio media stream as a :class:`Call` (``tw_…``). Rejecting or hanging up ends the
    stream (Twilio then goes on with the call's next TwiML verb: with none, it hangs up);
    Twilio's ``<Connect>`` cannot be transferred from here (use Twilio's ``<Dial>``)."""

    transport = "twilio"
    audio_rate = PHONE_RATE

    def __init__(
        self, stream: TwilioStream, conn: RealtimeConnection, registry: CallRegistry
    ) -> None:
        self.stream = stream
        self.call_id = new_id("tw")
        self.headers = twiml.call_headers(stream.custom_parameters, stream.call_sid)
        self.state = CallState.INCOMING
        self.connection: RealtimeConnection | None = conn
        self._registry = registry
        self._deciding: asyncio.Task[None] | None = None
        stream.session.observers.append(self._observe)

    def configure(self, session: dict[str, Any]) -> None:
        """The stream's custom parameters (instructions, voice); a refused one is logged."""
        if not session or self.connection is None:
            return
        try:
            self.connection.apply_session(session)
        except ProtocolError as exc:
            self.stream.log.warning("call %s: custom parameters refused: %s", self.call_id, exc)

    def decide(self, decision: Any) -> None:
        self._deciding = asyncio.get_running_loop().create_task(decision)

    async def accept(self, session: dict[str, Any] | None) -> None:
        if self.state is not CallState.INCOMING:
            raise CallError(409, f"call {self.call_id} is {self.state.value}", "call_not_incoming")
        if session and self.connection is not None:
            try:
                self.connection.apply_session(session)
            except ProtocolError as exc:
                raise CallError(400, str(exc), exc.code, exc.param) from None
        self.state = CallState.ACTIVE
        self.stream.held = False

    async def reject(self, status: int, reason: str) -> None:
        if self.state is not CallState.INCOMING:
            raise CallError(409, f"call {self.call_id} is {self.state.value}", "call_not_incoming")
        self.stream.session.close(f"call rejected ({status}): {reason}")

    async def refer(self, target_uri: str) -> None:
        raise CallError(
            400,
            "a Twilio media stream cannot be transferred from here: use Twilio's <Dial>",
            "refer_not_supported",
        )

    async def hangup(self, reason: str) -> None:
        self.stream.session.close(reason)

    async def send_dtmf(self, digits: str) -> None:
        raise CallError(
            409,
            "Twilio Media Streams cannot send keypad tones into the call (Twilio has no such"
            " message): use TwiML <Play digits> on the call, or a SIP call",
            "dtmf_not_supported",
        )

    def _observe(self, session: Session, event: m.SessionEvent) -> None:
        if isinstance(event, m.SessionClosed) and self.state is not CallState.ENDED:
            self.state = CallState.ENDED
            if self._deciding is not None and self._deciding is not asyncio.current_task():
                self._deciding.cancel()
            self._registry.ended(self)


# ---------------------------------------------------------------- HTTP plumbing


def _may_control(owner: str | None, principal: Principal) -> bool:
    """A call made with an API key (``owner``: its fingerprint) is that key's; a phone call
    (no owner) is any API key's, but not a browser's client secret's."""
    if owner is not None:
        return owner == principal.owner
    return principal.secret is None


async def _answer(do: Any, request: web.Request) -> web.Response:
    try:
        await do(request)
    except CallError as exc:
        raise _http_error(exc) from None
    return web.Response(status=200)


def _http_error(exc: CallError) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        400: web.HTTPBadRequest,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        413: web.HTTPRequestEntityTooLarge,
        503: web.HTTPServiceUnavailable,
    }
    kind = kinds.get(exc.status, web.HTTPInternalServerError)
    body = error_body(str(exc), exc.code, exc.param)
    if kind is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY_BYTES,
            actual_size=MAX_BODY_BYTES + 1,
            text=body,
            content_type="application/json",
        )
    return kind(text=body, content_type="application/json")


async def _json_body(request: web.Request, *, required: bool) -> dict[str, Any]:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise CallError(413, f"the body is over {MAX_BODY_BYTES} bytes", "body_too_large")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise CallError(413, f"the body is over {MAX_BODY_BYTES} bytes", "body_too_large")
    if not raw.strip():
        if required:
            raise CallError(400, "a JSON object body is required", "invalid_request_body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CallError(400, f"the body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise CallError(400, "the body must be a JSON object", "invalid_request_body")
    if lone_surrogate(body):
        raise CallError(400, f"the body: {LONE_SURROGATE}", "invalid_request_body")
    return body


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise CallError(
            400, f"unknown parameter '{unknown[0][:40]}'", "unknown_parameter", unknown[0][:40]
        )
