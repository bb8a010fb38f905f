"""A session's two deadlines of last resort: how long it may last, how long it may go unheard.

:func:`enforce` runs beside the session (:class:`~transports.runner.SessionRunner` starts it
with the session) and closes it, on the session's own clock, once ``SessionLimits.max_session_s``
has passed since it started or ``SessionLimits.idle_s`` since the client was last heard from
(any client message or audio: ``Session.last_input_at``). :func:`due` is the decision, pure.
"""

from __future__ import annotations

from pipeline.session import Session
from pipeline.settings import SessionLimits


def length_reason(limit_s: float) -> str:
    return f"session length limit ({limit_s:g} s, limits.max_session_s) reached"


def idle_reason(limit_s: float) -> str:
    return f"idle timeout: nothing from the client for {limit_s:g} s (limits.idle_s)"


def next_deadline(started: float, last_input: float | None, limits: SessionLimits) -> float | None:
    """When :func:`due` may next say yes; None: never (both limits off)."""
    heard = max(started, last_input if last_input is not None else started)
    deadlines = []
    if limits.max_session_s > 0:
        deadlines.append(started + limits.max_session_s)
    if limits.idle_s > 0:
        deadlines.append(heard + limits.idle_s)
    return min(deadlines, default=None)


def due(started: float, last_input: float | None, now: float, limits: SessionLimits) -> str | None:
    """Why a session that started at ``started`` and last heard its client at ``last_input``
    must close at ``now``; None: it may go on."""
    if limits.max_session_s > 0 and now >= started + limits.max_session_s:
        return length_reason(limits.max_session_s)
    heard = max(started, last_input if last_input is not None else started)
    if limits.idle_s > 0 and now >= heard + limits.idle_s:
        return idle_reason(limits.idle_s)
    return None


async def enforce(session: Session) -> None:
    """Close ``session`` when one of its deadlines passes; returns then, or at once when both
    limits are off. Cancel-safe (the runner cancels it when the session ends)."""
    clock, limits = session.clock, session.limits
    started = clock.now()
    while session.closed_reason is None:
        deadline = next_deadline(started, session.last_input_at, limits)
        if deadline is None:
            return
        await clock.sleep_until(deadline)
        reason = due(started, session.last_input_at, clock.now(), limits)
        if reason is not None:
            session.close(reason)
            return
