"""SIP over TCP (RFC 3261 §18): the listener and the connections, an I/O shell over
:class:`~.stream.Framer`.

The SIP agent listens on TCP at the address and port of its UDP socket. Every connection's bytes
are cut into messages by its framer and handed to the agent as a datagram would be, with the
sender's address as a :class:`TcpPeer` — a ``(host, port)`` tuple whose type says "on that TCP
connection", so the agent's responses, which go back to where the request came from, go back on
the connection it came on. A message to a :class:`TcpPeer` with no connection opens one (the
messages wait for it, a bounded few; a connection that cannot be made drops them: the
transaction then times out as it would on a lost datagram).

What a connection may not do, and what then happens (a warning in the log says why):

- send bytes that cannot be framed (no ``Content-Length``, a header block past the limit):
  a request is answered (400, 413) when its header block could be read, then the connection is
  closed — nothing after it can be read;
- stay silent for ``idle_timeout`` while no call uses it: closed;
- not read what we send (``max_write_buffer`` bytes waiting): closed;
- be one more than ``max_connections``: closed as it is accepted (or, ours, not opened).

RFC 5626 keep-alives (an empty line pair) are answered with one line end.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import NamedTuple, Protocol, cast

from pipeline.tasks import cancel_and_wait

from .message import SipError, param
from .stream import PONG, Framed, Framer, Ping, Unframeable

log = logging.getLogger("voice.transport.sip")


class TcpPeer(NamedTuple):
    """The far end of a TCP connection: where a message to it goes over TCP."""

    host: str
    port: int


class Receiver(Protocol):
    """What the connections tell the SIP agent."""

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """One whole message from ``addr`` (a :class:`TcpPeer`)."""
        ...

    def unframeable(self, head: bytes, addr: tuple[str, int], error: SipError) -> None:
        """Bytes that cannot be framed; ``head`` the header block if it was read (may be
        empty). The connection closes right after: answer now if at all."""
        ...

    def in_use(self, peer: TcpPeer) -> bool:
        """Whether a live call came on this connection (it is then never idle)."""
        ...


@dataclass(slots=True, frozen=True)
class TcpSettings:
    # Timeouts
    idle_timeout: float = 60.0
    """A connection with no message either way for this long, and no call on it, is closed."""
    connect_timeout: float = 5.0
    # Limits
    max_connections: int = 256
    max_pending: int = 16
    """Messages waiting for a connection we open; more are dropped."""
    max_write_buffer: int = 256 * 1024


class _Connection(asyncio.Protocol):
    def __init__(self, owner: SipTcp, peer: TcpPeer | None = None) -> None:
        self.owner = owner
        self.peer = peer
        self.framer = Framer()
        self.transport: asyncio.Transport | None = None
        self.last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = cast(asyncio.Transport, transport)
        if self.peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            self.peer = TcpPeer(host, port)
        if not self.owner._adopt(self):
            self.transport.abort()
            return
        self.touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.owner._lost(self)

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.touch()
        for event in self.framer.feed(data):
            if isinstance(event, Framed):
                self.owner.receiver.datagram(event.data, self.peer)
            elif isinstance(event, Ping):
                self.write(PONG)
            elif isinstance(event, Unframeable):
                self.owner.receiver.unframeable(event.head, self.peer, event.error)
                self.close(f"cannot frame its bytes: {event.error}")

    def eof_received(self) -> bool | None:
        return None  # (the transport closes)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        self.touch()
        if transport.get_write_buffer_size() > self.owner.settings.max_write_buffer:
            self.close("it does not read what we send", abort=True)

    def close(self, reason: str, *, abort: bool = False) -> None:
        """Close (what was written is flushed first; ``abort``: dropped, for a peer that does
        not read)."""
        if self.transport is not None and not self.transport.is_closing():
            assert self.peer is not None
            log.warning("SIP TCP %s:%d closed: %s", self.peer.host, self.peer.port, reason)
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def touch(self) -> None:
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        if self._idle is None:
            self._idle = loop.call_at(
                self.last_active + self.owner.settings.idle_timeout, self._check
            )

    def _check(self) -> None:
        self._idle = None
        assert self.peer is not None
        loop = asyncio.get_running_loop()
        idle = self.owner.settings.idle_timeout
        if self.owner.receiver.in_use(self.peer):
            self.touch()
        elif loop.time() - self.last_active >= idle:
            self.close(f"idle for {idle:g} s")
        else:
            self._idle = loop.call_at(self.last_active + idle, self._check)


class SipTcp:
    """The TCP listener and every connection, in and out: :meth:`start`, then :meth:`stop`."""

    def __init__(self, receiver: Receiver, settings: TcpSettings | None = None) -> None:
        self.receiver = receiver
        self.settings = settings or TcpSettings()
        self.connections: dict[TcpPeer, _Connection] = {}
        self.refused = 0
        """Connections closed at once: past ``max_connections``."""
        self._server: asyncio.Server | None = None
        self._pending: dict[TcpPeer, list[bytes]] = {}
        self._connecting: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (raises :class:`OSError` when it is taken)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)

    async def stop(self) -> None:
        """Close the listener and every connection (what was written is flushed first)."""
        await cancel_and_wait(list(self._connecting))
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            if connection.transport is not None:
                connection.transport.close()
        self.connections.clear()

    def connected(self, peer: TcpPeer) -> bool:
        connection = self.connections.get(peer)
        return connection is not None and connection.transport is not None

    def send(self, data: bytes, peer: TcpPeer) -> None:
        """Write ``data`` on the connection with ``peer``; with none, open one first."""
        connection = self.connections.get(peer)
        if connection is not None:
            connection.write(data)
            return
        waiting = self._pending.get(peer)
        if waiting is not None:
            if len(waiting) < self.settings.max_pending:
                waiting.append(data)
            else:
                log.warning("SIP TCP %s:%d: too many messages wait for it; dropped", *peer)
            return
        self._pending[peer] = [data]
        task = asyncio.get_running_loop().create_task(self._connect(peer), name="sip-tcp-connect")
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, peer: TcpPeer) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, peer), peer.host, peer.port
                )
        except (OSError, TimeoutError) as exc:
            dropped = len(self._pending.pop(peer, []))
            log.warning("SIP TCP %s:%d: cannot connect (%s); %d dropped", *peer, exc, dropped)
            return
        for data in self._pending.pop(peer, []):
            protocol.write(data)

    def _adopt(self, connection: _Connection) -> bool:
        assert connection.peer is not None
        if len(self.connections) >= self.settings.max_connections:
            self.refused += 1
            log.warning(
                "SIP TCP %s:%d refused: %d connections already",
                *connection.peer,
                len(self.connections),
            )
            return False
        self.connections[connection.peer] = connection
        return True

    def _lost(self, connection: _Connection) -> None:
        if connection.peer is not None and self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]


def uri_transport(uri: str) -> str:
    """``TCP`` for a URI with ``;transport=tcp``, else ``UDP`` (RFC 3261 §19.1.1)."""
    value = param(uri.split("?", 1)[0], "transport")
    return "TCP" if value is not None and value.lower() == "tcp" else "UDP"
