"""Keypad presses (DTMF) from a phone caller, sans-I/O but for one timer.

A transport that hears a keypad press (Twilio's ``dtmf`` message, an RFC 4733 event on SIP)
calls :meth:`pipeline.session.Session.dtmf`, which hands it to the session's :class:`Keypad`:

1. every valid press is an event at once (:class:`~pipeline.messages.DtmfReceived`; a Realtime
   client sees ``input_audio_buffer.dtmf_event_received``);
2. with :attr:`KeypadSettings.to_conversation` on, presses are gathered into one user item,
   ``"[keypad] 1 2 3 #"``: it is written when a terminator key (``#``) is pressed, when
   ``max_digits`` are gathered, or ``flush_ms`` after the last press; then, as after a spoken
   turn, a reply follows (``respond``), and a reply that is playing is interrupted first
   (``interrupt``).

A press that is not one of ``0-9 * # A-D`` raises :class:`~pipeline.errors.ProtocolError`
(``invalid_dtmf``); nothing of it is kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .clock import Clock
from .errors import ProtocolError

DIGITS = frozenset("0123456789*#ABCD")
ITEM_PREFIX = "[keypad]"
"""How the user item of gathered presses starts (the model reads it as the caller's input)."""


@dataclass(slots=True)
class KeypadSettings:
    to_conversation: bool = True
    """Gathered presses become a user item (else they are only reported to the client)."""
    respond: bool = True
    """A reply follows the item (as after a spoken turn; the session's ``create_response`` too)."""
    interrupt: bool = True
    """A press cuts off the reply being spoken (a caller pressing keys wants to be heard)."""
    flush_ms: int = 1500
    """Presses after which this long passes without another are written as one item."""
    terminators: str = "#"
    """Keys that end the gathering at once (they are part of the item)."""
    max_digits: int = 32
    """Gathered presses written at once when this many have come (a bound, not a policy)."""


class Keypad:
    """One session's keypad. ``report(digit, received_at)`` tells the client of each press;
    ``write(text)`` adds the user item of gathered presses and answers it (the session's);
    ``interrupt()`` cuts off the reply being spoken; ``spawn`` runs the flush timer as one of
    the session's tasks. ``wall`` gives the UTC time a press is stamped with (seconds)."""

    def __init__(
        self,
        clock: Clock,
        *,
        report: Callable[[str, int], None],
        write: Callable[[str], None],
        interrupt: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[Any]],
        settings: KeypadSettings | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or KeypadSettings()
        self.pending: list[str] = []
        """Presses gathered, not yet written."""
        self._clock = clock
        self._report = report
        self._write = write
        self._interrupt = interrupt
        self._spawn = spawn
        self._wall = wall
        self._timer: asyncio.Task[Any] | None = None

    def press(self, digit: str) -> None:
        """One keypad press. Raises :class:`ProtocolError` for a key that does not exist."""
        if not isinstance(digit, str) or digit.upper() not in DIGITS or len(digit) != 1:
            raise ProtocolError(
                f"DTMF digit {str(digit)[:8]!r} is not a keypad key (0-9, *, #, A-D)",
                code="invalid_dtmf",
                param="digit",
            )
        digit = digit.upper()
        self._report(digit, int(self._wall()))
        s = self.settings
        if not s.to_conversation:
            return
        if s.interrupt:
            self._interrupt()
        self.pending.append(digit)
        if digit in s.terminators or len(self.pending) >= s.max_digits:
            self.flush()
        else:
            self._restart_timer()

    def flush(self) -> None:
        """Write the gathered presses now (nothing when there are none)."""
        self._stop_timer()
        if self.pending:
            text = f"{ITEM_PREFIX} {' '.join(self.pending)}"
            self.pending.clear()
            self._write(text)

    def close(self) -> None:
        """Forget the gathered presses (the session ends)."""
        self._stop_timer()
        self.pending.clear()

    def _restart_timer(self) -> None:
        self._stop_timer()
        deadline = self._clock.now() + self.settings.flush_ms / 1000.0
        self._timer = self._spawn(self._flush_later(deadline))

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def _flush_later(self, deadline: float) -> None:
        """Cancel-safe: a cancelled timer writes nothing."""
        await self._clock.sleep_until(deadline)
        self._timer = None
        self.flush()
