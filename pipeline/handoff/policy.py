"""When a session changes engine besides a client's ``session.update``: a keypad key
(:func:`dtmf_switch`); the tool is ``tools.py``, the HTTP call on a live call is the server's
(``POST /v1/sessions/{id}/engine``), and the fallback on an upstream failure is the relay's."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ProtocolError
from ..messages import DtmfReceived, SessionEvent
from .base import check_engine

if TYPE_CHECKING:
    from ..session import Session

KEYS = "0123456789*#ABCD"


def parse_dtmf(digits: dict[str, str], where: str) -> dict[str, str]:
    """``{key: engine}``, each key a keypad key and each engine a known one; raises
    :class:`ValueError` naming the bad entry."""
    for key, engine in digits.items():
        if len(key) != 1 or key not in KEYS:
            raise ValueError(f"{where}: {key!r} is not a keypad key ({KEYS})")
        try:
            check_engine(engine, where)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None
    return digits


def dtmf_switch(digits: dict[str, str]) -> Callable[[Session, SessionEvent], None]:
    """A session observer: the caller pressing one of ``digits`` switches the engine to the
    one it names (the press is still reported, and gathered like any other)."""

    def observe(session: Session, event: SessionEvent) -> None:
        if not isinstance(event, DtmfReceived):
            return
        engine = digits.get(event.digit)
        if engine is None or engine == session.engine:
            return
        try:
            session.switch_engine(engine)
        except ProtocolError as exc:
            session.log.warning("key %s: cannot switch to %s: %s", event.digit, engine, exc)

    return observe
