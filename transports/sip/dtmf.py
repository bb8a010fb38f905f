"""Keypad digits as RTP events (RFC 4733 §2.3), both directions, sans-I/O.

An event payload is 4 bytes: the event code, an end bit, the volume, and the duration so far in
timestamp units. A sender repeats the packet every 20 ms with a growing duration, all with the
timestamp of the event's start, and sends the final (end) packet three times. :class:`Detector`
reports each digit once, on the first packet of its event, whatever is lost or repeated after.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .message import SipError

DIGITS = "0123456789*#ABCD"
MAX_DIGITS = 32
"""The most keys one request may press (an IVR's longest answer: a card number and a PIN)."""
EVENT = struct.Struct("!BBH")
END_REPEATS = 3
VOLUME = 10  # dBm0 below the reference, as most phones send


@dataclass(slots=True, frozen=True)
class Event:
    digit: str
    end: bool
    volume: int
    duration: int

    def encode(self) -> bytes:
        flags = (0x80 if self.end else 0) | (self.volume & 0x3F)
        return EVENT.pack(DIGITS.index(self.digit), flags, self.duration & 0xFFFF)

    @classmethod
    def parse(cls, payload: bytes) -> Event:
        if len(payload) < EVENT.size:
            raise SipError(f"RFC 4733 payload of {len(payload)} bytes", code="invalid_dtmf")
        code, flags, duration = EVENT.unpack_from(payload)
        if code >= len(DIGITS):
            raise SipError(f"RFC 4733 event {code} is not a keypad digit", code="invalid_dtmf")
        return cls(DIGITS[code], bool(flags & 0x80), flags & 0x3F, duration)


def check_digits(digits: str, limit: int = MAX_DIGITS) -> str:
    """``digits`` if every one is a keypad digit (0-9 * # A-D) and there are 1 to ``limit`` of
    them, else :class:`SipError` (``invalid_dtmf``)."""
    bad = [d for d in digits if d not in DIGITS]
    if not digits or bad:
        raise SipError(f"not keypad digits: {digits[:32]!r}", code="invalid_dtmf")
    if len(digits) > limit:
        raise SipError(f"{len(digits)} keypad digits: at most {limit}", code="invalid_dtmf")
    return digits


def packets(digit: str, *, duration_ms: int = 100, frame: int = 160) -> list[Event]:
    """The payloads for one digit, one per 20 ms frame, the end packet repeated."""
    check_digits(digit)
    steps = max(1, duration_ms // 20)
    events = [Event(digit, False, VOLUME, frame * (i + 1)) for i in range(steps - 1)]
    final = Event(digit, True, VOLUME, frame * steps)
    return events + [final] * END_REPEATS


class Detector:
    """Turns received event packets into digits, each reported once."""

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._order: list[int] = []

    def receive(self, timestamp: int, payload: bytes) -> str | None:
        """The digit if this packet starts a new event (its timestamp not seen), else None."""
        event = Event.parse(payload)
        if timestamp in self._seen:
            return None
        self._seen.add(timestamp)
        self._order.append(timestamp)
        if len(self._order) > 64:  # remember the last few events only
            self._seen.discard(self._order.pop(0))
        return event.digit
