"""Who may connect: API keys, client secrets, browser origins and Twilio's signature.

Every request passes the :class:`Gate`'s middleware, which sorts its path under one
:class:`Rule` (:func:`rule_for`):

- ``PUBLIC``: ``GET /``, the web client's ``/static/`` files, ``/healthz``, ``/readyz``;
- ``TWILIO`` (``/v1/twilio/media-stream``, and ``/v1/twilio/voice`` whose signature covers its
  form): with ``twilio.auth_token`` set, Twilio's ``X-Twilio-Signature`` and nothing else (a
  bad or missing one: 403); without it, an API key like any other endpoint (Twilio cannot send
  one, so a server with keys takes no Twilio calls until the token is set);
- ``SESSION`` (``/v1/realtime``, ``/v1/realtime/calls`` and a call's own paths): an API key or a
  client secret (:mod:`voice.client_secrets`);
- ``KEY``: everything else (minting client secrets among it): an API key.

A credential is ``Authorization: Bearer <key>`` or, for a browser's WebSocket (which cannot set
headers), the subprotocol ``openai-insecure-api-key.<key>`` offered beside ``realtime``, as
OpenAI's browser clients do. Keys are compared in constant time against every configured key and
never logged (a short :func:`fingerprint` at most). With no key configured authentication is off
(a client secret presented is still checked, for its configuration); :func:`exposure_refusal`
then keeps the server on a loopback address. A missing or wrong credential is a 401 with OpenAI's
error body, before any WebSocket upgrade or SDP; a browser request (``Origin``) from an origin
other than the server's own or ``server.allowed_origins`` is a 403.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDictProxy

from pipeline.errors import ConfigError, LimitExceeded, ProtocolError
from transports import twilio_signature

from . import client_secrets
from .client_secrets import ClientSecret, SecretStore
from .config import Config

log = logging.getLogger("voice.auth")

SUBPROTOCOL = "openai-insecure-api-key."
"""A browser's WebSocket carries its key as this subprotocol prefix (OpenAI's spelling)."""
TWILIO_PATH = "/v1/twilio/media-stream"
TWILIO_VOICE_PATH = "/v1/twilio/voice"
"""Twilio's call webhook: its signature covers the POSTed form as well as the URL."""
_PUBLIC = frozenset({"/", "/healthz", "/readyz"})
_SESSION = frozenset({"/v1/realtime", "/v1/realtime/calls"})
_MAX_MINT_BYTES = 1 << 20


class Rule(enum.Enum):
    PUBLIC = "public"
    TWILIO = "twilio"
    SESSION = "session"
    KEY = "key"


def rule_for(path: str) -> Rule:
    if path in _PUBLIC or path.startswith("/static/"):
        return Rule.PUBLIC
    if path in (TWILIO_PATH, TWILIO_VOICE_PATH):
        return Rule.TWILIO
    if path in _SESSION or path.startswith("/v1/realtime/calls/"):
        return Rule.SESSION
    return Rule.KEY


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from."""

    owner: str
    """Fingerprint of the API key it stands for (a client secret's: of the key that minted it);
    ``twilio`` for a signed Twilio stream; empty when authentication is off."""
    secret: ClientSecret | None = None
    """The client secret it connected with, if any."""


ANONYMOUS = Principal("")
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def fingerprint(credential: str) -> str:
    """A short name for a credential that reveals nothing of it (for logs and counts)."""
    return "fp_" + hashlib.sha256(_utf8(credential)).hexdigest()[:8]


def load_keys(listed: str, path: str) -> tuple[str, ...]:
    """The API keys: ``listed`` (comma-separated) and the lines of the file ``path`` (blank
    lines and ``#`` comments skipped). Raises :class:`ConfigError` if the file cannot be read."""
    keys = [k.strip() for k in listed.split(",")]
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"server.api_keys_file: cannot read {path}: {exc}") from None
        keys += [line.strip() for line in lines if not line.strip().startswith("#")]
    keys = [k for k in keys if k]
    if any(k.startswith(client_secrets.PREFIX) for k in keys):
        raise ConfigError(f"server.api_keys: a key may not start with {client_secrets.PREFIX!r}")
    return tuple(dict.fromkeys(keys))


def credential(headers: CIMultiDictProxy[str]) -> str | None:
    """The credential a request carries: a Bearer token, else the key in the WebSocket
    subprotocols; None if neither."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for line in headers.getall("Sec-WebSocket-Protocol", ()):
        for offered in line.split(","):
            offered = offered.strip()
            if offered.startswith(SUBPROTOCOL) and len(offered) > len(SUBPROTOCOL):
                return offered[len(SUBPROTOCOL) :]
    return None


def match_key(candidate: str, keys: Sequence[str]) -> str | None:
    """The configured key equal to ``candidate``; every key is compared, in constant time."""
    given, found = _utf8(candidate), None
    for key in keys:
        if hmac.compare_digest(_utf8(key), given):
            found = key
    return found


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates included: aiohttp decodes a header's bad bytes into them
    (``surrogateescape``), and such a credential must be refused, not raise."""
    return text.encode("utf-8", "surrogatepass")


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost, or "" (every interface)
        return False


def exposure_refusal(host: str, *, keys: bool, allow_unauthenticated: bool) -> str | None:
    """Why the server must not listen on ``host``; None when it may. Without API keys only a
    loopback address is allowed, unless the operator said otherwise in so many words."""
    if keys or allow_unauthenticated or is_loopback(host):
        return None
    return (
        f"refusing to listen on {host or 'every interface'} without API keys: anyone who can"
        " reach it could use the server. Set server.api_keys (or server.api_keys_file), or set"
        " server.allow_unauthenticated = true to accept that."
    )


def check_exposure(config: Config) -> None:
    """Raise :class:`ConfigError` when the configuration would expose an open server."""
    s = config.server
    keys = load_keys(s.api_keys, s.api_keys_file)
    refusal = exposure_refusal(
        s.host, keys=bool(keys), allow_unauthenticated=s.allow_unauthenticated
    )
    if refusal is not None:
        raise ConfigError(refusal)


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request with this ``Origin`` (None: not a browser's) may go on: same origin
    as ``host`` (the request's ``Host``), ``allowed`` lists it, or ``allowed`` has ``*``."""
    if origin is None or "*" in allowed or origin.rstrip("/") in allowed:
        return True
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:  # "http://[": no URL, so no origin of ours
        return False
    return host is not None and netloc.lower() == host.lower()


def error_body(message: str, code: str, param: str | None = None) -> str:
    """OpenAI's error shape."""
    error = {"message": message, "type": "invalid_request_error", "code": code, "param": param}
    return json.dumps({"error": error})


def _with_scheme(base: str, *, websocket: bool) -> str:
    """``twilio.public_url`` (``wss://host`` or ``https://host``) with the scheme Twilio used:
    ``wss``/``ws`` for the media stream, ``https``/``http`` for the voice webhook."""
    pairs = (("https://", "wss://"), ("http://", "ws://"))
    for web_scheme, ws_scheme in pairs:
        if websocket and base.startswith(web_scheme):
            return ws_scheme + base.removeprefix(web_scheme)
        if not websocket and base.startswith(ws_scheme):
            return web_scheme + base.removeprefix(ws_scheme)
    return base


def _refusal(
    kind: type[web.HTTPException], message: str, code: str, param: str | None = None
) -> web.HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if kind is web.HTTPUnauthorized else None
    return kind(
        text=error_body(message, code, param), content_type="application/json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gate:
    """The server's door: decides who each request comes from, or refuses it."""

    def __init__(self, config: Config, *, now: Callable[[], float] = time.time) -> None:
        s = config.server
        self.keys = load_keys(s.api_keys, s.api_keys_file)
        self.secrets = SecretStore(s.max_client_secrets, now)
        self.allowed_origins = tuple(
            o.strip().rstrip("/") for o in s.allowed_origins.split(",") if o.strip()
        )
        self.max_sessions_per_key = s.max_sessions_per_key
        self.twilio_token = config.twilio.auth_token
        self.twilio_url = config.twilio.public_url.rstrip("/")

    @property
    def on(self) -> bool:
        """Authentication is on: API keys are configured."""
        return bool(self.keys)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        params = None
        if request.path == TWILIO_VOICE_PATH and self.twilio_token and request.method == "POST":
            form = await request.post()  # (aiohttp keeps it for the handler; client_max_size)
            params = {k: v for k, v in form.items() if isinstance(v, str)}
        request[PRINCIPAL] = self.admit(request, params)
        return await handler(request)

    def admit(self, request: web.Request, params: dict[str, str] | None = None) -> Principal:
        """Who the request comes from; raises the HTTP error that refuses it. ``params``: the
        POSTed form of a Twilio webhook (its signature covers it)."""
        rule = rule_for(request.path)
        if rule is Rule.PUBLIC:
            return ANONYMOUS
        if rule is Rule.TWILIO and self.twilio_token:
            self._check_twilio(request, params)
            return Principal("twilio")
        if not origin_allowed(request.headers.get("Origin"), request.host, self.allowed_origins):
            log.info(
                "refused %s %s from %s: origin %.100s not allowed (server.allowed_origins)",
                request.method,
                request.path,
                request.remote,
                request.headers.get("Origin"),
            )
            raise _refusal(
                web.HTTPForbidden,
                "This origin may not use the server (server.allowed_origins).",
                "origin_not_allowed",
            )
        return self.authenticate(request, secrets_ok=rule is Rule.SESSION)

    def authenticate(self, request: web.Request, *, secrets_ok: bool) -> Principal:
        given = credential(request.headers)
        if given is not None and given.startswith(client_secrets.PREFIX):
            secret = self.secrets.find(given) if secrets_ok else None
            if secret is not None:
                return Principal(secret.owner, secret)
            why = (
                "Unknown or expired client secret."
                if secrets_ok
                else "A client secret only opens Realtime sessions; this needs an API key."
            )
            raise self._unauthorized(request, why, given)
        if not self.on:
            return ANONYMOUS
        if given is None:
            raise self._unauthorized(
                request,
                "Missing API key: send Authorization: Bearer <key> (a browser's WebSocket: the"
                f" subprotocol {SUBPROTOCOL}<key>).",
                None,
            )
        key = match_key(given, self.keys)
        if key is None:
            raise self._unauthorized(request, "Incorrect API key provided.", given)
        return Principal(fingerprint(key))

    def _unauthorized(
        self, request: web.Request, message: str, given: str | None
    ) -> web.HTTPException:
        log.info(
            "refused %s %s from %s: %s (credential %s)",
            request.method,
            request.path,
            request.remote,
            message,
            fingerprint(given) if given is not None else "none",
        )
        return _refusal(web.HTTPUnauthorized, message, "invalid_api_key")

    def _check_twilio(self, request: web.Request, params: dict[str, str] | None = None) -> None:
        websocket = request.path == TWILIO_PATH
        if self.twilio_url:
            url = _with_scheme(self.twilio_url, websocket=websocket) + request.raw_path
        else:
            secure = request.secure
            scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
            url = str(request.url.with_scheme(scheme))
        signed = request.headers.get("X-Twilio-Signature")
        if not twilio_signature.is_valid(self.twilio_token, url, signed, params):
            log.info(
                "refused a Twilio stream from %s: %s X-Twilio-Signature for %s (twilio.public_url)",
                request.remote,
                "a wrong" if signed else "no",
                url,
            )
            raise _refusal(
                web.HTTPForbidden, "Missing or invalid X-Twilio-Signature.", "invalid_signature"
            )

    def check_quota(self, principal: Principal, live_owners: Iterable[str | None]) -> None:
        """Refuse (429) one more session for a key that has ``server.max_sessions_per_key``."""
        if not self.on or not principal.owner:
            return
        held = sum(owner == principal.owner for owner in live_owners)
        if held >= self.max_sessions_per_key:
            raise _refusal(
                web.HTTPTooManyRequests,
                f"This API key has {held} sessions open, its limit"
                f" (server.max_sessions_per_key = {self.max_sessions_per_key}).",
                "too_many_sessions",
            )

    async def mint(
        self, request: web.Request, describe: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> web.Response:
        """``POST /v1/realtime/client_secrets``. ``describe`` applies a session configuration to
        a fresh session's and returns the result (raises :class:`ProtocolError`). Cancel-safe."""
        if (request.content_length or 0) > _MAX_MINT_BYTES:
            raise _refusal(web.HTTPRequestEntityTooLarge, "The body is too large.", "too_large")
        data = await request.content.read(_MAX_MINT_BYTES + 1)
        owner = principal_of(request).owner
        try:
            if len(data) > _MAX_MINT_BYTES:
                raise ProtocolError("The body is too large.", code="too_large")
            body = _json(data)
            session, seconds = client_secrets.parse_request(body)
            shown = describe(session)
            value, secret = self.secrets.mint(session, seconds, owner)
        except LimitExceeded as exc:
            raise _refusal(web.HTTPTooManyRequests, str(exc), exc.code) from None
        except ProtocolError as exc:
            raise _refusal(web.HTTPBadRequest, str(exc), exc.code, exc.param) from None
        log.info(
            "minted client secret %s for %s, valid %d s",
            fingerprint(value),
            owner or "anyone (authentication off)",
            seconds,
        )
        return web.json_response(
            {"value": value, "expires_at": int(secret.expires_at), "session": shown}
        )


def _json(data: bytes) -> Any:
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
