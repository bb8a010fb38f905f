"""One session's lifecycle, the same for every transport.

A transport adapter maps its wire onto a session and nothing else: what to read, how to render a
session event, how to close its socket. The :class:`SessionRunner` does the rest, once:

- it runs :meth:`Session.run` and pumps :meth:`Session.next_event` to the transport's ``deliver``
  (which renders and sends one event), each delivery bounded by ``send_timeout``; beside them
  it enforces the session's length and idle limits (:func:`pipeline.deadlines.enforce`);
- it notices the end: the session closed (its :class:`~pipeline.messages.SessionClosed` was
  delivered), a send that timed out (the peer is not reading) or failed, or — with :meth:`serve`
  — the transport's reader returning why the peer left;
- it tears down: closes the session with the reason, cancels and awaits both tasks, and logs the
  bounded transcript summary.

::

    runner = SessionRunner(session, deliver, log=log, peer="Twilio", send_timeout=5.0)
    reason = await runner.serve(read)   # start, run until either side ends, stop
    await close_socket(session.failed, session.closed_reason)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pipeline import messages as m
from pipeline.clock import timeout
from pipeline.deadlines import enforce
from pipeline.session import Session
from pipeline.tasks import cancel_and_wait

Deliver = Callable[[m.SessionEvent], Awaitable[None]]


class SessionRunner:
    """Runs one session for one transport: ``start`` → (``wait`` | ``serve``) → ``stop``.

    ``deliver`` renders one session event onto the wire; an exception it raises ends the session
    ("cannot send to <peer>: …"), and so does a delivery slower than ``send_timeout`` ("<peer> is
    not reading: a send timed out"). ``describe`` adds the transport's own facts to the summary
    line logged at the end.
    """

    def __init__(
        self,
        session: Session,
        deliver: Deliver,
        *,
        log: logging.Logger,
        peer: str,
        send_timeout: float = 10.0,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.session = session
        self.peer = peer
        self.send_timeout = send_timeout
        self._deliver = deliver
        self._log = log
        self._describe = describe
        self._run: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[str] | None = None
        self._stopped: asyncio.Event | None = None
        self._deadlines: asyncio.Task[None] | None = None
        """Closes the session past ``limits.max_session_s`` or ``limits.idle_s``."""

    def start(self) -> None:
        """Start the session and the pump (once; later calls do nothing)."""
        if self._pump is not None:
            return
        sid = self.session.id
        loop = asyncio.get_running_loop()
        self._run = loop.create_task(self.session.run(), name=f"session-{sid}")
        self._pump = loop.create_task(self._pump_events(), name=f"{self.peer}-writer-{sid}")
        self._deadlines = loop.create_task(enforce(self.session), name=f"deadlines-{sid}")

    @property
    def ended(self) -> bool:
        """The output has ended: the session closed, or a send failed."""
        return self._pump is not None and self._pump.done()

    async def wait(self) -> str:
        """Wait until the output ends; returns why. Cancel-safe (the pump goes on)."""
        assert self._pump is not None, "start() first"
        await asyncio.wait({self._pump})
        return self._why(self._pump)

    async def serve(self, read: Callable[[], Coroutine[Any, Any, str]]) -> str:
        """Start, run ``read`` (the transport's reader: it returns why the peer left) until it
        returns or the output ends, whichever comes first, then :meth:`stop`; returns the reason
        the session ended. Cancel-safe: a cancelled serve still stops everything."""
        self.start()
        assert self._pump is not None
        reason = f"{self.peer} disconnected"
        reader = asyncio.get_running_loop().create_task(read(), name=f"{self.peer}-reader")
        try:
            await asyncio.wait({reader, self._pump}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reason = reader.result()
            else:
                reason = self._why(self._pump)
        finally:
            await cancel_and_wait((reader,))
            await self.stop(reason)
        return self.session.closed_reason or reason

    async def stop(self, reason: str) -> None:
        """Close the session with ``reason`` (unless it has closed already), cancel and await the
        session and the pump, log the summary. Idempotent; a second call waits for the first.
        Cancelling it while it waits leaves both tasks cancelled, perhaps not finished yet."""
        if self._stopped is not None:
            await self._stopped.wait()
            return
        self._stopped = asyncio.Event()
        try:
            self.session.close(reason)
            tasks = (self._pump, self._run, self._deadlines)
            await cancel_and_wait(t for t in tasks if t is not None)
            details = f": {self._describe()}" if self._describe is not None else ""
            self._log.info(
                "session %s ended (%s)%s; %s",
                self.session.id,
                self.session.closed_reason,
                details,
                self.session.transcript_summary(),
                extra={"session": self.session.id},
            )
        finally:
            self._stopped.set()

    async def _pump_events(self) -> str:
        while True:
            event = await self.session.next_event()
            async with timeout(self.session.clock, self.send_timeout):
                await self._deliver(event)
            if isinstance(event, m.SessionClosed):
                return event.reason

    def _why(self, pump: asyncio.Task[Any]) -> str:
        """Why the pump stopped: the session closed, or a send failed or timed out."""
        if pump.cancelled():
            return self.session.closed_reason or "session ended"
        exc = pump.exception()
        if isinstance(exc, TimeoutError):
            return f"{self.peer} is not reading: a send timed out"
        if exc is not None:
            return f"cannot send to {self.peer}: {exc!r}"
        return str(pump.result())
