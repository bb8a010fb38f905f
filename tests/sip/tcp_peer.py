"""The hand-driven SIP peer of ``peer.py`` on a TCP connection to the agent (its RTP stays
UDP): what it reads is cut into messages by the agent's own framer, and the end of the
connection is an event a test can wait for (:meth:`TcpPeer.closed`)."""

from __future__ import annotations

import asyncio
import contextlib

from transports.sip.stream import Framed, Framer

from .peer import Peer


class TcpPeer(Peer):
    sip_transport = "TCP"

    def __init__(self, agent_port: int) -> None:
        super().__init__(agent_port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.raw = bytearray()
        """Every byte the agent sent (keep-alive answers included)."""
        self._ended = asyncio.Event()
        self._reading: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TcpPeer:
        await super().__aenter__()  # (its UDP socket stays unused but for RTP)
        self.reader, self.writer = await asyncio.open_connection(*self.agent)
        self.port = self.writer.get_extra_info("sockname")[1]
        self._reading = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if self.writer is not None:
            self.writer.close()
        await super().__aexit__(*exc)

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def _read(self) -> None:
        assert self.reader is not None
        framer = Framer()
        try:
            while data := await self.reader.read(65536):
                self.raw += data
                for event in framer.feed(data):
                    if isinstance(event, Framed):
                        self.queue.put_nowait((event.data, self.agent))
        except ConnectionError:
            pass
        finally:
            self._ended.set()

    async def closed(self, within: float) -> None:
        """Return once the agent has closed the connection (AssertionError after ``within``)."""
        try:
            async with asyncio.timeout(within):
                await self._ended.wait()
        except TimeoutError:
            raise AssertionError(f"the agent kept the connection open past {within} s") from None

    @property
    def is_open(self) -> bool:
        return not self._ended.is_set()
