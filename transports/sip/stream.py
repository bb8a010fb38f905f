"""SIP messages on a byte stream (RFC 3261 §18.3, TCP): where one message ends, sans-I/O.

On a stream nothing marks a message's end but its header block's empty line and then
``Content-Length`` bytes of body, so ``Content-Length`` is mandatory there. :class:`Framer` is fed
the bytes as they arrive, in pieces of any size, and hands back what they complete:

- :class:`Framed`: one whole message (its headers and exactly its body), for
  :func:`~.message.parse`;
- :class:`Ping`: an RFC 5626 keep-alive (an empty line pair between messages), answered with
  :data:`PONG`;
- :class:`Unframeable`: the stream cannot be read on — a header block past ``max_head`` bytes
  (413), or a header block whose ``Content-Length`` is missing, malformed, ambiguous (400) or
  past ``max_body`` (413). ``head`` holds the header block when it was read whole, so a request
  can still be answered; then the connection must close: the next message's start is lost.
  The framer takes nothing more after it.

A single CRLF between messages (a keep-alive's answer, or a peer's stray line end) is skipped.
Both limits bound what a framer holds: at most ``max_head + max_body`` bytes of one message.
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import MAX_MESSAGE_BYTES, SipError, canonical

MAX_HEAD = 16_384
"""The largest header block taken (start line, headers, the empty line)."""
MAX_BODY = MAX_MESSAGE_BYTES - MAX_HEAD
"""The largest ``Content-Length`` taken: a framed message is never larger than a datagram."""
PING = b"\r\n\r\n"
PONG = b"\r\n"


@dataclass(slots=True)
class Framed:
    data: bytes


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class Unframeable:
    error: SipError
    """Why, with the status a request would be answered with."""
    head: bytes = b""
    """The header block (up to its empty line), when it was read whole; else empty."""


Event = Framed | Ping | Unframeable


class Framer:
    """One connection's incoming bytes, cut into messages: :meth:`feed` bytes, get events."""

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self._buffer = bytearray()
        self._scanned = 0
        """How far the search for the header block's end has gone (it does not start over)."""
        self._head: bytes | None = None
        """The current message's header block, once read; then ``_length`` bytes of body."""
        self._length = 0
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes held: part of a message not complete yet."""
        return len(self._buffer) + len(self._head or b"")

    def feed(self, data: bytes) -> list[Event]:
        """The messages (and keep-alives) ``data`` completes, in order; after an
        :class:`Unframeable` the framer is :attr:`broken` and takes nothing more."""
        if self.broken:
            return []
        self._buffer += data
        events: list[Event] = []
        while not self.broken:
            event = self._next()
            if event is None:
                break
            events.append(event)
        return events

    def _next(self) -> Event | None:
        if self._head is None:
            return self._read_head()
        if len(self._buffer) < self._length:
            return None
        message = self._head + bytes(self._buffer[: self._length])
        del self._buffer[: self._length]
        self._head = None
        return Framed(message)

    def _read_head(self) -> Event | None:
        buffer = self._buffer
        while buffer.startswith(b"\r\n") or buffer.startswith(b"\n"):
            if buffer.startswith(PING):
                del buffer[:4]
                return Ping()
            if PING.startswith(bytes(buffer)):
                return None  # a keep-alive, or a line end: the next bytes tell
            del buffer[: 2 if buffer.startswith(b"\r\n") else 1]
        end = _head_end(buffer, max(self._scanned - 3, 0))
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > self.max_head:
                return self._break(SipError(f"header block over {self.max_head} bytes", status=413))
            return None
        head = bytes(buffer[:end])
        if len(head) > self.max_head:
            return self._break(SipError(f"header block over {self.max_head} bytes", status=413))
        try:
            length = content_length(head, self.max_body)
        except SipError as exc:
            return self._break(exc, head)
        del buffer[:end]
        self._scanned = 0
        self._head, self._length = head, length
        return self._next()

    def _break(self, error: SipError, head: bytes = b"") -> Unframeable:
        self.broken = True
        self._buffer.clear()
        self._head = None
        return Unframeable(error, head)


def _head_end(buffer: bytearray, start: int) -> int:
    """Where the header block ends (after its empty line), or -1; a bare-LF block (``\\n\\n``)
    is taken as :func:`~.message.parse` takes it."""
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    ends = [i + n for i, n in ((crlf, 4), (lf, 2)) if i >= 0]
    return min(ends) if ends else -1


def content_length(head: bytes, max_body: int) -> int:
    """The body length a header block announces; :class:`SipError` 400 when it is missing,
    malformed or given twice with different values, 413 past ``max_body``."""
    values = set()
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and canonical(name.decode("latin-1")) == "content-length":
            values.add(value.strip())
    if not values:
        raise SipError("no Content-Length on a stream (RFC 3261 §18.3)", code="no_length")
    if len(values) > 1:
        raise SipError("different Content-Length values", code="bad_length")
    (value,) = values
    if not value.isdigit() or len(value) > 10:
        raise SipError(f"malformed Content-Length {value[:20]!r}", code="bad_length")
    length = int(value)
    if length > max_body:
        raise SipError(
            f"Content-Length {length} over the {max_body}-byte limit", status=413, code="too_large"
        )
    return length
