"""Twilio's request signature (``X-Twilio-Signature``), sans-I/O.

Twilio signs each request with the account's auth token: HMAC-SHA1 over the full URL it
requested (as written in the TwiML or the console, scheme and query included) followed by every
POST parameter, sorted by name, as name and value run together; base64. A Media Streams WebSocket
is signed the same way, over its ``wss://`` URL with no parameters.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


def signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The signature Twilio sends for a request to ``url`` with POST ``params``."""
    data = url + "".join(name + (params or {})[name] for name in sorted(params or {}))
    digest = hmac.new(_utf8(auth_token), _utf8(data), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def is_valid(
    auth_token: str, url: str, received: str | None, params: Mapping[str, str] | None = None
) -> bool:
    """Whether ``received`` (the header's value; None: absent) is Twilio's signature for this
    request. Compared in constant time."""
    if not received:
        return False
    expected = signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), _utf8(received.strip()))


def _utf8(text: str) -> bytes:
    """UTF-8, lone surrogates included: aiohttp decodes a header's bad bytes into them
    (``surrogateescape``), and such a header must be refused, not raise."""
    return text.encode("utf-8", "surrogatepass")
