"""Whether the server takes new sessions: one answer for ``GET /readyz`` and for admission.

Liveness (``/healthz``) is only "the process answers"; readiness is every condition below, and
a connection that arrives while one fails is refused with HTTP 503 and that condition's message.
"""

from __future__ import annotations

from dataclasses import dataclass

DRAINING = "server is draining"


@dataclass(slots=True, frozen=True)
class Admission:
    warm: bool
    """The models are loaded and warmed up (or warm-up is off)."""
    draining: bool
    sessions: int
    max_sessions: int


def unready(state: Admission) -> dict[str, str]:
    """The conditions that fail, by name (``draining``, ``warming_up``, ``capacity``) → why, most
    telling first; empty when the server takes new sessions."""
    failed: dict[str, str] = {}
    if state.draining:
        failed["draining"] = DRAINING
    if not state.warm:
        failed["warming_up"] = "the models are warming up"
    if state.sessions >= state.max_sessions:
        failed["capacity"] = f"server is at its limit of {state.max_sessions} sessions"
    return failed


def refusal(state: Admission) -> tuple[str, str] | None:
    """Why a new session is refused now, as (condition, message); None when it is taken."""
    return next(iter(unready(state).items()), None)
