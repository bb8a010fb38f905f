"""Twilio's request signature (``X-Twilio-Signature``), sans-I/O.

Twilio signs each request with the account's auth token: HMAC-SHA1 over the full URL it
requested (as written in the TwiML or the console, scheme and query included) followed by every
POST parameter, sorted by name, as name and value run together; base64. A Media Streams WebSocket
is signed the same way, over its ``wss://`` URL with no parameters. Where the URL names its
scheme's default port (or leaves it out), both spellings are accepted (:func:`url_variants`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit


def signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The signature Twilio sends for a request to ``url`` with POST ``params``."""
    data = url + "".join(name + (params or {})[name] for name in sorted(params or {}))
    digest = hmac.new(_utf8(auth_token), _utf8(data), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def is_valid(
    auth_token: str, url: str, received: str | None, params: Mapping[str, str] | None = None
) -> bool:
    """Whether ``received`` (the header's value; None: absent) is Twilio's signature for this
    request, over ``url`` or one of its :func:`url_variants`. Compared in constant time."""
    if not received:
        return False
    given = _utf8(received.strip())
    found = False
    for variant in url_variants(url):  # (every variant is compared: no early exit)
        expected = signature(auth_token, variant, params)
        found |= hmac.compare_digest(expected.encode(), given)
    return found


def url_variants(url: str) -> list[str]:
    """The spellings of ``url`` Twilio may have signed: as given, and with the port made
    explicit or left out where it is the scheme's default (Twilio's own libraries try both, as
    its signature depends on how the URL was written in the console, while a proxy may add or
    drop the port)."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.username is not None or default is None:
        return [url]
    try:
        port = parts.port
    except ValueError:  # a malformed port: only the URL as given
        return [url]
    if port is None:
        other = parts._replace(netloc=f"{host}:{default}")
    elif port == default:
        other = parts._replace(netloc=host)
    else:
        return [url]
    return [url, urlunsplit(other)]


_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates included: aiohttp decodes a header's bad bytes into them
    (``surrogateescape``), and such a header must be refused, not raise."""
    return text.encode("utf-8", "surrogatepass")
