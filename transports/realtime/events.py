"""Server events' common parts: ids and the ``error`` event."""

from __future__ import annotations

import secrets
from typing import Any

Event = dict[str, Any]


def event_id() -> str:
    return f"event_{secrets.token_hex(10)}"


def make_event(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": event_id(), **fields}


def error_event(
    message: str, code: str | None, kind: str, client_event_id: str | None, param: str | None
) -> Event:
    return make_event(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    )
