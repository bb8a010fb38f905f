"""Client secrets (``POST /v1/realtime/client_secrets``): short-lived credentials for a browser.

An operator's backend, holding a real API key, mints one with a session configuration (OpenAI's
request shape ``{"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {...}}``)
and hands the value (``ek_…``) to a page. Until it expires the page may open Realtime sessions
with it (``/v1/realtime``, ``/v1/realtime/calls``), each starting with that configuration
applied as a ``session.update`` would. A secret cannot mint secrets.

The store keeps only a SHA-256 of each value (the value itself leaves in the response and is
never kept or logged), at most ``max_secrets`` of them; expired ones are dropped as they are met.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import LimitExceeded, ProtocolError
from transports.realtime.validate import LONE_SURROGATE, lone_surrogate

PREFIX = "ek_"
MIN_S, MAX_S, DEFAULT_S = 10, 7200, 600
"""OpenAI's range for ``expires_after.seconds``, and its default."""
_BYTES = 24  # 192 random bits
_FIELDS = {"expires_after", "session"}


@dataclass(frozen=True, slots=True)
class ClientSecret:
    session: dict[str, Any]
    """The session configuration every session opened with it starts with."""
    expires_at: float
    """Unix time."""
    owner: str
    """Fingerprint of the API key that minted it (its sessions count against that key)."""


class SecretStore:
    """Minted secrets by the hash of their value. ``now`` is the wall clock (Unix seconds),
    injectable so that expiry is tested without waiting."""

    def __init__(self, max_secrets: int, now: Callable[[], float] = time.time) -> None:
        self.max_secrets = max_secrets
        self._now = now
        self._by_hash: dict[bytes, ClientSecret] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def mint(self, session: dict[str, Any], seconds: int, owner: str) -> tuple[str, ClientSecret]:
        """A new secret's value and record; raises :class:`LimitExceeded` when
        ``max_secrets`` unexpired secrets are held already."""
        if len(self._by_hash) >= self.max_secrets:
            self._drop_expired()
        if len(self._by_hash) >= self.max_secrets:
            raise LimitExceeded(
                f"{self.max_secrets} client secrets are live (server.max_client_secrets)",
                code="too_many_client_secrets",
            )
        value = PREFIX + secrets.token_urlsafe(_BYTES)
        secret = ClientSecret(session, self._now() + seconds, owner)
        self._by_hash[_digest(value)] = secret
        return value, secret

    def find(self, value: str) -> ClientSecret | None:
        """The live secret of this value; None if there is none (or it has expired)."""
        key = _digest(value)
        secret = self._by_hash.get(key)
        if secret is not None and secret.expires_at <= self._now():
            del self._by_hash[key]
            return None
        return secret

    def _drop_expired(self) -> None:
        now = self._now()
        for key in [k for k, s in self._by_hash.items() if s.expires_at <= now]:
            del self._by_hash[key]


def _digest(value: str) -> bytes:
    # a lookup by hash: what a timing attack could learn is the hash, which tells nothing
    # (surrogatepass: a header's bad bytes arrive as lone surrogates, never a secret's value)
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def parse_request(body: Any) -> tuple[dict[str, Any], int]:
    """The session configuration and the lifetime (seconds) a mint request asks for; raises
    :class:`ProtocolError` naming the field at fault."""
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object", code="invalid_type", param=None)
    if lone_surrogate(body):
        raise ProtocolError(LONE_SURROGATE, code="invalid_json")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ProtocolError(
            f"unknown parameter '{unknown[0]}'", code="unknown_parameter", param=unknown[0]
        )
    session = body.get("session", {})
    if not isinstance(session, dict):
        raise ProtocolError("'session' must be an object", code="invalid_type", param="session")
    return session, _seconds(body.get("expires_after"))


def _seconds(expires: Any) -> int:
    if expires is None:
        return DEFAULT_S
    if not isinstance(expires, dict):
        raise ProtocolError(
            "'expires_after' must be an object", code="invalid_type", param="expires_after"
        )
    unknown = sorted(set(expires) - {"anchor", "seconds"})
    if unknown:
        param = f"expires_after.{unknown[0]}"
        raise ProtocolError(f"unknown parameter '{param}'", code="unknown_parameter", param=param)
    if expires.get("anchor", "created_at") != "created_at":
        raise ProtocolError(
            "'expires_after.anchor' must be 'created_at'",
            code="invalid_value",
            param="expires_after.anchor",
        )
    seconds = expires.get("seconds", DEFAULT_S)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not MIN_S <= seconds <= MAX_S:
        raise ProtocolError(
            f"'expires_after.seconds' must be an integer from {MIN_S} to {MAX_S}",
            code="invalid_value",
            param="expires_after.seconds",
        )
    return seconds
