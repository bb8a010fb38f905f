"""SIP messages (RFC 3261 §7): parse and serialize requests and responses, sans-I/O.

:func:`parse` takes one datagram and returns a :class:`Request` or a :class:`Response`, or raises
:class:`SipError` naming what is wrong and the status to answer with (400 Bad Request, 413, 505).
Header names are kept as sent but compared case-insensitively, and the compact forms (``i`` for
``Call-ID``, ``v`` for ``Via`` …) are read as their long names. Folded header lines (a line that
begins with a space or a tab continues the one before) are joined. ``Content-Length`` decides
where the body ends; a body shorter than it is an error, extra bytes after it are dropped
(§18.3). :meth:`Request.encode` and :meth:`Response.encode` always write ``Content-Length``.

Limits: a message is at most ``MAX_MESSAGE_BYTES`` (a UDP datagram), with at most
``MAX_HEADERS`` header fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.errors import ProtocolError

MAX_MESSAGE_BYTES = 65_507
MAX_HEADERS = 128
MAX_LINE = 8192

COMPACT = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
}
REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "Version Not Supported",
    603: "Decline",
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_STATUS = re.compile(r"^SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)$")
_RPORT = re.compile(r";\s*rport\s*(?=;|$|,)")


class SipError(ProtocolError):
    """A SIP message we cannot take; ``status`` is the response to answer a request with."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_sip") -> None:
        super().__init__(message, code=code)
        self.status = status


def canonical(name: str) -> str:
    """The lower-case long form of a header name (compact forms expanded)."""
    lower = name.strip().lower()
    return COMPACT.get(lower, lower)


@dataclass(slots=True)
class _Message:
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """The first value of header ``name`` (any case, compact or long form), or None."""
        key = canonical(name)
        for k, v in self.headers:
            if canonical(k) == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        key = canonical(name)
        return [v for k, v in self.headers if canonical(k) == key]

    def need(self, name: str) -> str:
        value = self.get(name)
        if value is None or not value.strip():
            raise SipError(f"missing {name} header")
        return value.strip()

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value``."""
        key = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if canonical(k) != key]
        self.headers.append((name, value))

    @property
    def call_id(self) -> str:
        return self.need("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """``(number, method)`` from the CSeq header."""
        parts = self.need("CSeq").split()
        if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 10:
            raise SipError(f"malformed CSeq {self.get('CSeq')!r:.80}")
        number = int(parts[0])
        if number >= 2**31:
            raise SipError("CSeq number out of range")
        return number, parts[1].upper()

    @property
    def from_tag(self) -> str | None:
        return param(self.need("From"), "tag")

    @property
    def to_tag(self) -> str | None:
        return param(self.need("To"), "tag")

    @property
    def branch(self) -> str | None:
        via = self.get("Via")
        return None if via is None else param(via.split(",")[0], "branch")

    def _encode(self, start: str) -> bytes:
        lines = [start]
        lines += [f"{k}: {v}" for k, v in self.headers if canonical(k) != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass(slots=True)
class Request(_Message):
    method: str = ""
    uri: str = ""

    def encode(self) -> bytes:
        return self._encode(f"{self.method} {self.uri} SIP/2.0")


@dataclass(slots=True)
class Response(_Message):
    status: int = 200
    reason: str = "OK"

    def encode(self) -> bytes:
        return self._encode(f"SIP/2.0 {self.status} {self.reason}")


def parse(data: bytes) -> Request | Response:
    """One SIP message from one datagram; raises :class:`SipError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError(f"message larger than {MAX_MESSAGE_BYTES} bytes", status=413)
    data = data.lstrip(b"\r\n")  # keep-alive CRLFs before a message are allowed
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, rest = data.partition(b"\n\n")  # bare LF line ends (tolerated)
        if not sep:
            raise SipError("no empty line after the headers")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipError("headers are not UTF-8") from exc
    lines = text.replace("\r\n", "\n").split("\n")
    start, headers = lines[0], _headers(lines[1:])
    message = _start_line(start)
    message.headers = headers
    message.body = _body(message, rest)
    return message


def _start_line(line: str) -> Request | Response:
    if len(line) > MAX_LINE:
        raise SipError("start line too long")
    if line.startswith("SIP/"):
        match = _STATUS.match(line)
        if match is None:
            raise SipError(f"malformed status line {line!r:.80}")
        return Response(status=int(match[1]), reason=match[2])
    parts = line.split(" ")
    if len(parts) != 3 or not parts[1]:
        raise SipError(f"malformed request line {line!r:.80}")
    method, uri, version = parts
    if not _TOKEN.match(method):
        raise SipError(f"malformed method {method!r:.40}")
    if version.upper() != "SIP/2.0":
        raise SipError(f"SIP version {version!r:.20} not supported", status=505)
    if ":" not in uri:
        raise SipError(f"malformed Request-URI {uri!r:.80}")
    return Request(method=method, uri=uri)


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if len(line) > MAX_LINE:
            raise SipError("header line too long")
        if line[:1] in (" ", "\t"):
            if not headers:
                raise SipError("continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            raise SipError(f"malformed header line {line!r:.80}")
        headers.append((name, value.strip()))
        if len(headers) > MAX_HEADERS:
            raise SipError(f"more than {MAX_HEADERS} headers")
    return headers


def _body(message: _Message, rest: bytes) -> bytes:
    lengths = message.get_all("Content-Length")
    if not lengths:
        return rest  # (allowed on UDP: the body is the rest of the datagram)
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        raise SipError(f"malformed Content-Length {lengths[0]!r:.20}")
    length = int(lengths[0])
    if length > len(rest):
        raise SipError(f"Content-Length {length} but only {len(rest)} bytes of body")
    return rest[:length]


def param(value: str, name: str) -> str | None:
    """The value of ``;name=`` in a header value's parameters (after any ``<uri>``), or None;
    a parameter without ``=`` reads as ``""``."""
    tail = value.rsplit(">", 1)[-1] if "<" in value else value
    for part in tail.split(";")[1:]:
        key, eq, val = part.partition("=")
        if key.strip().lower() == name:
            return val.strip().strip('"') if eq else ""
    return None


def uri_of(value: str) -> str:
    """The URI inside a name-addr (``"Bob" <sip:bob@x>;tag=1``) or an addr-spec."""
    if "<" in value:
        start = value.index("<") + 1
        end = value.find(">", start)
        if end < 0:
            raise SipError(f"unclosed '<' in {value!r:.80}")
        return value[start:end].strip()
    return value.split(";", 1)[0].strip()


def host_port(uri: str, default_port: int = 5060) -> tuple[str, int]:
    """``(host, port)`` of a ``sip:`` URI (parameters and headers dropped)."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = rest.partition(":")
    if not host:
        raise SipError(f"no host in URI {uri!r:.80}")
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise SipError(f"bad port in URI {uri!r:.80}")
    return host, int(port) if port else default_port


def stamp_via(via: str, source: tuple[str, int]) -> str:
    """The top Via of a request as its response carries it: ``received`` with the address the
    request came from, and ``rport`` filled in where the client asked for it (RFC 3581)."""
    top, comma, rest = via.partition(",")
    top = _RPORT.sub(f";rport={source[1]}", top, count=1)
    if param(top, "received") is None:
        top = f"{top.rstrip()};received={source[0]}"
    return top + comma + rest


def response_to(
    request: Request,
    status: int,
    *,
    to_tag: str | None = None,
    reason: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` (§8.2.6): its Via, From, Call-ID and CSeq copied, a To tag added
    when the request's To has none and ``to_tag`` is given."""
    copied = [
        (k, v)
        for k, v in request.headers
        if canonical(k) in ("via", "from", "call-id", "cseq", "record-route")
    ]
    to = request.get("To") or ""
    if to_tag is not None and param(to, "tag") is None and status > 100:
        to = f"{to};tag={to_tag}"
    copied.append(("To", to))
    return Response(
        status=status,
        reason=reason or REASONS.get(status, "Unknown"),
        headers=copied + (headers or []),
        body=body,
    )
