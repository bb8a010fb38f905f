"""Shutting down without cutting calls short: the drain.

::

    serving ──SIGTERM/SIGINT──▶ draining ──every session ended──────────▶ stopped
                                   │ new connections: HTTP 503 "server is draining"
                                   │ /readyz: 503
                                   └──drain_timeout_s, or a second signal──▶ closing
    closing: the sessions left are closed with "server shutting down" (their transcripts are
    kept), and have close_timeout_s to end ──▶ stopped

Calls still connecting when the drain starts have no session yet: they are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pipeline.tasks import cancel_and_wait

from .health import DRAINING

if TYPE_CHECKING:
    from .server import VoiceServer

log = logging.getLogger("voice.drain")
SHUTTING_DOWN = "server shutting down"


class ShutdownSignals:
    """SIGTERM and SIGINT on the running loop: the first sets :attr:`drain` (stop taking calls,
    let the active ones finish), the next sets :attr:`hurry` (close them now)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.hurry = asyncio.Event()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self.received, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    def received(self, sig: signal.Signals) -> None:
        if not self.drain.is_set():
            log.info("%s: draining (a second signal closes the sessions at once)", sig.name)
            self.drain.set()
        elif not self.hurry.is_set():
            log.warning("%s again: closing the sessions now", sig.name)
            self.hurry.set()


async def drain(
    server: VoiceServer,
    *,
    timeout_s: float,
    close_timeout_s: float,
    hurry: asyncio.Event | None = None,
) -> int:
    """Stop taking sessions, let the active ones go on for up to ``timeout_s`` (or until
    ``hurry`` is set), then close those left with :data:`SHUTTING_DOWN` and give them
    ``close_timeout_s`` to end. Returns how many had to be closed. The server stays draining.
    Cancel-safe: cancelling it leaves the remaining sessions to :meth:`VoiceServer.stop`."""
    server.draining = True
    log.info(
        "draining: new sessions are refused; %d active may go on for up to %g s",
        len(server.sessions),
        timeout_s,
    )
    for call in [c for c in server.calls.values() if not c.connected]:
        await call.close(DRAINING)
    with contextlib.suppress(TimeoutError):  # the deadline is the expected way out
        async with asyncio.timeout(timeout_s):
            await wait_ended(lambda: list(server.sessions), server.wait_ended, hurry)
    left = list(server.sessions.values())
    if not left:
        log.info("drained: every session has ended")
        return 0
    log.warning("closing %d sessions still active: %s", len(left), SHUTTING_DOWN)
    for call in list(server.calls.values()):
        await call.close(SHUTTING_DOWN)
    for session in left:
        session.close(SHUTTING_DOWN)
    try:
        async with asyncio.timeout(close_timeout_s):
            await wait_ended(lambda: list(server.sessions), server.wait_ended)
    except TimeoutError:
        log.warning("%d sessions did not end within %g s", len(server.sessions), close_timeout_s)
    return len(left)


async def wait_ended(
    active: Callable[[], list[str]],
    ended: Callable[[str], Coroutine[Any, Any, object]],
    hurry: asyncio.Event | None = None,
) -> None:
    """Return once ``active()`` is empty (each id is awaited with ``ended``), or ``hurry`` is
    set. Cancel-safe."""
    while (ids := active()) and not (hurry is not None and hurry.is_set()):
        waiters: list[asyncio.Task[Any]] = [asyncio.create_task(ended(i)) for i in ids]
        if hurry is not None:
            waiters.append(asyncio.create_task(hurry.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(waiters)
