"""Live calls, whatever carries their audio: the registry behind OpenAI-style call control.

A *call* is one conversation with a far end that the server did not dial into by WebSocket: a
WebRTC call (``POST /v1/realtime/calls``), a Twilio media stream, a SIP call. Each transport
wraps its calls in an object that follows the small :class:`Call` protocol; the
:class:`CallRegistry` keeps the live ones by ``call_id`` so that the HTTP routes
(``call_control.py``: ``POST /v1/realtime/calls/{call_id}/accept`` · ``reject`` · ``refer`` ·
``hangup`` · ``dtmf``) and a Realtime WebSocket opened with ``?call_id=`` reach them alike.

The life of an incoming call (SIP, Twilio)::

    transport                          registry                           webhook / client
    ─────────                          ────────                           ────────────────
    call = MyCall(...)  (INCOMING)
    registry.add(call)
    await registry.incoming(call) ──▶  no webhook: call.accept(None)
                                       webhook:   POST realtime.call.incoming ──▶ (headers)
                                                  wait ≤ calls.accept_timeout
                                                  ◀── POST …/accept {session} → call.accept(session)
                                                  ◀── POST …/reject {status_code} → call.reject(…)
                                                  nothing in time → call.reject(408, …)
    call.accept(session):
        conn = registry.open_session(call, session)   (validated; counted; recorded)
        … start media, run the session (transports/runner.py) …  (ACTIVE)
    at the end (either side):  registry.ended(call)   (ENDED; transcript kept)

A WebRTC call is born ACTIVE (its client configured the session with the offer, as at OpenAI),
so it is only added and ended. Every method of :class:`Call` is idempotent where that makes sense
and raises :class:`CallError` (an HTTP status and a message) when the call cannot do it — a
call that is not INCOMING cannot be accepted (409), a transport without transfer cannot refer
(400) — never anything else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from pipeline.errors import VoiceError
from transports.realtime.connection import RealtimeConnection

log = logging.getLogger("voice.calls")

INCOMING_EVENT = "realtime.call.incoming"
DEFAULT_REJECT_STATUS = 603
"""SIP's Decline: what ``/reject`` sends when no ``status_code`` is given (OpenAI's default)."""
TIMEOUT_STATUS = 408
"""What a call gets when the webhook's receiver neither accepted nor rejected it in time."""


class CallState(enum.Enum):
    INCOMING = "incoming"
    """Announced, waiting to be accepted or rejected; no session yet."""
    ACTIVE = "active"
    """Accepted: its session runs."""
    ENDED = "ended"


class CallError(VoiceError):
    """A call cannot do what was asked; ``status`` is the HTTP status to answer with, ``code``
    names the problem (OpenAI's error ``code``)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class Call(Protocol):
    """One live call, as a transport implements it.

    ``call_id``: unique among live calls, safe in a URL path (``rtc_…``, ``sip_…``, ``tw_…``).
    ``transport``: ``webrtc``, ``sip`` or ``twilio``. ``headers``: what the far end said of
    itself, in order — a SIP INVITE's headers (authorization headers left out), a Twilio
    stream's call facts and custom parameters — as ``(name, value)``; untrusted. ``state``: see
    :class:`CallState`. ``connection``: the call's Realtime view of its session once ACTIVE
    (its configuration is what ``?call_id=`` watchers share and ``session.update`` changes);
    None before.
    """

    call_id: str
    transport: str
    headers: list[tuple[str, str]]
    state: CallState
    connection: RealtimeConnection | None
    audio_rate: int
    """The rate the call's codec carries (8000 for G.711, 16000 for G.722, 48000 for Opus):
    the session's replies are made at it, whatever format a client configures."""

    async def accept(self, session: dict[str, Any] | None) -> None:
        """Answer the call with this Realtime session object (None: the server's defaults),
        already validated by the registry; the call's implementation opens its session with
        :meth:`CallRegistry.open_session`. Raises :class:`CallError` (409 unless INCOMING).
        Not cancel-safe: the call may be left half answered (hang it up)."""
        ...

    async def reject(self, status: int, reason: str) -> None:
        """Refuse the call with a SIP-style ``status`` (e.g. 486 busy, 603 decline; the
        transport maps it onto what it has). Raises :class:`CallError` (409 unless INCOMING)."""
        ...

    async def refer(self, target_uri: str) -> None:
        """Transfer the ACTIVE call to ``target_uri`` (``sip:…``, ``tel:…``; SIP REFER).
        Raises :class:`CallError` (400 where the transport cannot transfer, 409 unless ACTIVE)."""
        ...

    async def hangup(self, reason: str) -> None:
        """End the call, whatever its state (an INCOMING one is rejected). Idempotent."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Press keypad ``digits`` (already checked: 0-9 * # A-D) on the ACTIVE call's line (RFC
        4733 on SIP), queued to go out in order. Raises :class:`CallError` (409 where the
        transport cannot send them, or the call is not ACTIVE)."""
        ...


@dataclass(slots=True)
class WebhookSettings:
    url: str = ""
    """Where ``realtime.call.incoming`` is POSTed; empty: incoming calls are accepted at once
    with the server's defaults."""
    secret: str = ""
    """Signs each delivery as OpenAI does (Standard Webhooks: ``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``); ``whsec_<base64>``
    or raw text. Empty: unsigned."""
    accept_timeout: float = 10.0
    """Seconds an announced call waits for ``/accept`` or ``/reject`` before it is rejected."""
    delivery_timeout: float = 5.0
    """Seconds for the webhook's receiver to answer the POST (a 2xx); else the call is
    rejected at once."""


OpenSession = Callable[[Call, "dict[str, Any] | None"], RealtimeConnection]
"""The server's way to open a call's session: a new session with the server's settings and
limits, counted and recorded, with the Realtime ``session`` object applied; raises
:class:`CallError` (400) for a configuration ``session.update`` would refuse, 503 at capacity."""
ValidateSession = Callable[["dict[str, Any]"], None]
"""Checks a Realtime ``session`` object against a fresh session; raises :class:`CallError`."""
SessionEnded = Callable[[Call], None]


class CallRegistry:
    """The live calls by ``call_id``, at most ``max_calls`` of them (more are refused: 503).

    ``open_session`` / ``validate`` / ``on_end`` are the server's (see their types). Webhook
    deliveries use ``post`` (``(url, body, headers) -> HTTP status``; aiohttp by default);
    ``now`` stamps them (UTC seconds)."""

    def __init__(
        self,
        *,
        open_session: OpenSession,
        validate: ValidateSession,
        on_end: SessionEnded,
        webhook: WebhookSettings | None = None,
        max_calls: int = 64,
        post: Post | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.webhook = webhook or WebhookSettings()
        self.max_calls = max_calls
        self._calls: dict[str, Call] = {}
        self._open = open_session
        self._validate = validate
        self._on_end = on_end
        self._post = post or post_json
        self._now = now
        self._decided: dict[str, asyncio.Event] = {}
        self._busy: set[str] = set()  # calls an accept or reject is deciding right now
        self._waiters: list[tuple[Callable[[CallRegistry], bool], asyncio.Future[None]]] = []

    # ------------------------------------------------------------ for transports

    def add(self, call: Call) -> None:
        """A new live call. Raises :class:`CallError` (503) past ``max_calls``."""
        if len(self._calls) >= self.max_calls:
            raise CallError(503, f"{len(self._calls)} calls are live, the limit", "too_many_calls")
        self._calls[call.call_id] = call
        self._changed()

    async def incoming(self, call: Call) -> None:
        """Decide an INCOMING call (see the module's diagram); returns once it is accepted,
        rejected, or hung up. Cancel-safe (the call stays INCOMING: hang it up)."""
        if not self.webhook.url:
            await self._accept_or_refuse(call)
            return
        decided = self._decided.setdefault(call.call_id, asyncio.Event())
        try:
            status = await self._announce(call)
        except (OSError, TimeoutError, ValueError) as exc:  # aiohttp's errors are OSErrors
            status, why = 0, f"{type(exc).__name__}: {exc}"
        else:
            why = f"HTTP {status}"
        if not 200 <= status < 300:
            log.warning("call %s: the webhook refused or failed (%s): rejected", call.call_id, why)
            await self._settle(call.reject(503, "webhook delivery failed"), call)
            return
        try:
            async with asyncio.timeout(self.webhook.accept_timeout):
                await decided.wait()
        except TimeoutError:
            log.info("call %s: not accepted within %gs", call.call_id, self.webhook.accept_timeout)
            await self._settle(call.reject(TIMEOUT_STATUS, "not accepted in time"), call)
        finally:
            self._decided.pop(call.call_id, None)

    def open_session(self, call: Call, session: dict[str, Any] | None) -> RealtimeConnection:
        """For a call's ``accept``: its session (see :data:`OpenSession`)."""
        return self._open(call, session)

    def ended(self, call: Call) -> None:
        """The call is over (either side hung up, or it was rejected): forget it."""
        if self._calls.pop(call.call_id, None) is not None:
            self._on_end(call)
            self._changed()
        event = self._decided.get(call.call_id)
        if event is not None:
            event.set()

    async def wait(self, predicate: Callable[[CallRegistry], bool]) -> None:
        """Return once ``predicate(registry)`` holds (checked as calls come and go; for
        tests and the drain). Cancel-safe."""
        if predicate(self):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            await future
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not future]

    def _changed(self) -> None:
        for predicate, future in self._waiters:
            if not future.done() and predicate(self):
                future.set_result(None)

    # ------------------------------------------------------------ for call control

    def get(self, call_id: str) -> Call:
        call = self._calls.get(call_id)
        if call is None:
            raise CallError(404, f"no live call {call_id[:64]!r}", "call_not_found", "call_id")
        return call

    def __iter__(self) -> Any:
        return iter(list(self._calls.values()))

    def __len__(self) -> int:
        return len(self._calls)

    async def accept(self, call_id: str, session: dict[str, Any]) -> Call:
        """``/accept``: validate ``session`` and answer with it. Raises :class:`CallError`
        (409 while another accept or reject of the call is under way)."""
        call = self._incoming(call_id)
        self._validate(session)
        with self._deciding(call):
            await call.accept(session)
        self._decide(call)
        return call

    async def reject(self, call_id: str, status: int) -> Call:
        call = self._incoming(call_id)
        with self._deciding(call):
            await call.reject(status, "rejected by the client")
        self._decide(call)
        return call

    @contextlib.contextmanager
    def _deciding(self, call: Call) -> Iterator[None]:
        if call.call_id in self._busy:
            raise CallError(409, f"call {call.call_id} is being decided", "call_not_incoming")
        self._busy.add(call.call_id)
        try:
            yield
        finally:
            self._busy.discard(call.call_id)

    def _incoming(self, call_id: str) -> Call:
        call = self.get(call_id)
        if call.state is not CallState.INCOMING:
            raise CallError(
                409, f"call {call_id} is {call.state.value}, not incoming", "call_not_incoming"
            )
        return call

    def _decide(self, call: Call) -> None:
        event = self._decided.get(call.call_id)
        if event is not None:
            event.set()

    async def _accept_or_refuse(self, call: Call) -> None:
        """Accept with the defaults; a call that cannot be (the server is full: 503) is
        rejected, busy (486), or 500 for anything else."""
        try:
            await call.accept(None)
        except CallError as exc:
            log.info("call %s: cannot accept: %s", call.call_id, exc)
            if call.state is CallState.INCOMING:
                status = 486 if exc.status in (429, 503) else 500
                await self._settle(call.reject(status, str(exc)), call)

    async def _settle(self, decision: Any, call: Call) -> None:
        try:
            await decision
        except CallError as exc:  # (it was hung up meanwhile)
            log.info("call %s: %s", call.call_id, exc)

    # ------------------------------------------------------------ the webhook

    def incoming_event(self, call: Call) -> dict[str, Any]:
        """The ``realtime.call.incoming`` payload for a call (OpenAI's shape)."""
        return {
            "object": "event",
            "id": f"evt_{secrets.token_hex(12)}",
            "type": INCOMING_EVENT,
            "created_at": int(self._now()),
            "data": {
                "call_id": call.call_id,
                "sip_headers": [{"name": n, "value": v} for n, v in call.headers],
            },
        }

    async def _announce(self, call: Call) -> int:
        event = self.incoming_event(call)
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "voice-server"}
        if self.webhook.secret:
            headers.update(sign(self.webhook.secret, event["id"], int(self._now()), body))
        log.info("call %s (%s): announced to the webhook", call.call_id, call.transport)
        async with asyncio.timeout(self.webhook.delivery_timeout):
            return await self._post(self.webhook.url, body, headers)


class Post(Protocol):
    async def __call__(self, url: str, body: bytes, headers: Mapping[str, str]) -> int: ...


async def post_json(url: str, body: bytes, headers: Mapping[str, str]) -> int:
    """POST ``body``; returns the HTTP status. Raises OSError. Cancel-safe."""
    async with aiohttp.ClientSession() as client:
        try:
            async with client.post(url, data=body, headers=dict(headers)) as response:
                return response.status
        except aiohttp.ClientError as exc:
            raise OSError(str(exc)) from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers (OpenAI's webhook signature) for one delivery."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{digest}",
    }
