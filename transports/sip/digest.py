"""HTTP digest authentication for SIP (RFC 2617 / RFC 7616 as RFC 3261 §22 uses it), sans-I/O.

Client side (REGISTER to a registrar, an INVITE a trunk challenges): :func:`parse_challenge`
reads a ``WWW-Authenticate`` / ``Proxy-Authenticate`` header, :func:`authorization` answers it
(MD5 or SHA-256, ``qop=auth`` or none). Server side (optional authentication of inbound calls):
:func:`challenge` writes one, :func:`verify` checks an ``Authorization`` header against a
password, with the nonce's freshness decided by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .message import SipError

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)\s*,?')
ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@dataclass(slots=True, frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = None
    """``auth`` when the server offers it (``auth-int`` alone is not supported)."""
    opaque: str | None = None
    stale: bool = False


def _params(value: str) -> dict[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipError(f"authentication scheme {scheme[:20]!r} is not Digest", code="invalid_auth")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(rest):
        raw = match[2]
        params[match[1].lower()] = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
    return params


def parse_challenge(value: str) -> Challenge:
    """A ``WWW-Authenticate`` or ``Proxy-Authenticate`` value; raises :class:`SipError`."""
    p = _params(value)
    if "realm" not in p or "nonce" not in p:
        raise SipError("digest challenge without realm or nonce", code="invalid_auth")
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise SipError(f"digest algorithm {algorithm[:20]!r} not supported", code="invalid_auth")
    qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise SipError(f"digest qop {qops} not supported (only auth)", code="invalid_auth")
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        algorithm=algorithm,
        qop="auth" if qops else None,
        opaque=p.get("opaque"),
        stale=p.get("stale", "").lower() == "true",
    )


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def response_value(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str = "",
    nc: str = "00000001",
) -> str:
    """The ``response=`` value (RFC 2617 §3.2.2.1)."""
    a = challenge.algorithm
    ha1 = _h(a, f"{username}:{challenge.realm}:{password}")
    ha2 = _h(a, f"{method}:{uri}")
    if challenge.qop == "auth":
        return _h(a, f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:auth:{ha2}")
    return _h(a, f"{ha1}:{challenge.nonce}:{ha2}")


def authorization(
    challenge: Challenge, *, username: str, password: str, method: str, uri: str, nc: int = 1
) -> str:
    """An ``Authorization`` / ``Proxy-Authorization`` value answering ``challenge``."""
    cnonce = secrets.token_hex(8)
    count = f"{nc:08x}"
    value = response_value(
        challenge,
        username=username,
        password=password,
        method=method,
        uri=uri,
        cnonce=cnonce,
        nc=count,
    )
    parts = [
        f'username="{_quote(username)}"',
        f'realm="{_quote(challenge.realm)}"',
        f'nonce="{_quote(challenge.nonce)}"',
        f'uri="{_quote(uri)}"',
        f'response="{value}"',
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.qop == "auth":
        parts += ["qop=auth", f'cnonce="{cnonce}"', f"nc={count}"]
    if challenge.opaque is not None:
        parts.append(f'opaque="{_quote(challenge.opaque)}"')
    return "Digest " + ", ".join(parts)


def _quote(text: str) -> str:
    if any(c in text for c in "\r\n"):
        raise SipError("line breaks in a digest parameter", code="invalid_auth")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def challenge(realm: str, nonce: str, *, stale: bool = False) -> str:
    """A ``WWW-Authenticate`` value (MD5, ``qop=auth``) for a 401."""
    extra = ", stale=true" if stale else ""
    quoted = f'realm="{_quote(realm)}", nonce="{_quote(nonce)}"'
    return f'Digest {quoted}, algorithm=MD5, qop="auth"{extra}'


NONCE_MAX_AGE_S = 300.0


def make_nonce(key: bytes, now: float) -> str:
    """A nonce that says when it was made, signed with ``key``: no table of issued nonces."""
    stamp = f"{now:.3f}"
    return f"{stamp}.{hmac.new(key, stamp.encode(), hashlib.sha256).hexdigest()[:32]}"


def nonce_state(key: bytes, nonce: str, now: float, max_age: float = NONCE_MAX_AGE_S) -> str:
    """``fresh``, ``stale`` (ours, but older than ``max_age``) or ``forged``."""
    stamp, _, mac = nonce.rpartition(".")
    expected = hmac.new(key, stamp.encode(), hashlib.sha256).hexdigest()[:32]
    if not stamp or not hmac.compare_digest(expected, mac):
        return "forged"
    try:
        made = float(stamp)
    except ValueError:
        return "forged"
    return "fresh" if 0 <= now - made <= max_age else "stale"


def verify(header: str, *, method: str, realm: str, users: dict[str, str]) -> tuple[str, str]:
    """Check an ``Authorization`` value: returns ``(username, nonce)`` when the response is
    right for one of ``users`` (name → password) in ``realm``; raises :class:`SipError` (403)
    otherwise. Whether the nonce is one we issued and still fresh is the caller's to check."""
    p = _params(header)
    username, nonce, uri = p.get("username", ""), p.get("nonce", ""), p.get("uri", "")
    if p.get("realm") != realm or username not in users or not nonce or not uri:
        raise SipError("wrong realm or unknown user", status=403, code="auth_failed")
    algorithm = p.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHMS:
        raise SipError(f"digest algorithm {algorithm[:20]!r} not supported", status=403)
    qop = p.get("qop")
    if qop not in (None, "auth"):
        raise SipError(f"digest qop {qop[:20]!r} not supported", status=403)
    expected = response_value(
        Challenge(realm, nonce, algorithm, qop),
        username=username,
        password=users[username],
        method=method,
        uri=uri,
        cnonce=p.get("cnonce", ""),
        nc=p.get("nc", ""),
    )
    if not hmac.compare_digest(expected, p.get("response", "")):
        raise SipError("wrong digest response", status=403, code="auth_failed")
    return username, nonce
