"""SIP transactions over UDP (RFC 3261 §17), sans-I/O: time is an argument, never read.

- :class:`Retransmit` is one message sent again on the RFC's timers: after T1, then doubling,
  capped at T2 (timers A/E/G and the UAS core's 2xx, §13.3.1.4), until it is stopped (the ACK or
  a response came) or 64·T1 have passed (timers B/F/H and the 2xx's give-up).
- :class:`ServerTransactions` remembers the last response to each request for 64·T1 (timer J,
  and the INVITE's while it waits for its ACK), so a retransmitted request is answered with the
  same response instead of being handled twice. It is bounded: the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .message import Request

T1 = 0.5
T2 = 4.0
MAX_TRANSACTIONS = 1024


@dataclass(slots=True, frozen=True)
class Timers:
    t1: float = T1
    t2: float = T2

    @property
    def give_up(self) -> float:
        return 64 * self.t1


class Retransmit:
    """``data`` sent at ``start``; :meth:`due` says what to send again at ``now``."""

    def __init__(self, data: bytes, start: float, timers: Timers, *, cap: bool = True) -> None:
        self.data = data
        self.timers = timers
        self.cap = cap
        self.interval = timers.t1
        self.next_at = start + timers.t1
        self.deadline = start + timers.give_up
        self.stopped = False
        self.sent = 1

    @property
    def expired(self) -> bool:
        return self.next_at >= self.deadline

    def due(self, now: float) -> bytes | None:
        """The message, if it is time to send it again (the next time is then set), else None."""
        if self.stopped or self.expired or now < self.next_at:
            return None
        self.interval = min(self.interval * 2, self.timers.t2) if self.cap else self.interval * 2
        self.next_at = min(self.next_at + self.interval, self.deadline)
        self.sent += 1
        return self.data

    def stop(self) -> None:
        self.stopped = True


def key(request: Request, source: tuple[str, int]) -> tuple[str, str, str]:
    """A server transaction's identity (§17.2.3): the top Via's branch, where it came from, the
    method (an ACK or CANCEL matches its INVITE's branch, kept apart by method)."""
    branch = request.branch or f"{request.call_id}/{request.cseq[0]}"  # RFC 2543 peers
    method = request.method
    return (branch, f"{source[0]}:{source[1]}", method)


class ServerTransactions:
    """The last response sent for each request, kept for ``Timers.give_up`` seconds."""

    def __init__(self, timers: Timers, limit: int = MAX_TRANSACTIONS) -> None:
        self.timers = timers
        self.limit = limit
        self._answers: OrderedDict[tuple[str, str, str], tuple[float, bytes | None]] = OrderedDict()

    def seen(self, k: tuple[str, str, str], now: float) -> tuple[bool, bytes | None]:
        """Whether this request was seen before (a retransmission), and what we answered."""
        self._expire(now)
        entry = self._answers.get(k)
        return (False, None) if entry is None else (True, entry[1])

    def answered(self, k: tuple[str, str, str], data: bytes | None, now: float) -> None:
        """Remember ``data`` (None: seen, not answered yet) as the answer to ``k``."""
        self._answers[k] = (now + self.timers.give_up, data)
        self._answers.move_to_end(k)
        while len(self._answers) > self.limit:
            self._answers.popitem(last=False)

    def _expire(self, now: float) -> None:
        while self._answers:
            first = next(iter(self._answers))
            if self._answers[first][0] > now:
                break
            del self._answers[first]

    def __len__(self) -> int:
        return len(self._answers)
