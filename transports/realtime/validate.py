"""Reading client events: JSON, sizes, and typed field access that names the bad parameter."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pipeline.errors import LimitExceeded, ProtocolError

T = TypeVar("T")
N = TypeVar("N", int, float)
_MISSING = object()
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_event(data: str | bytes, max_bytes: int) -> dict[str, Any]:
    """One client event from a text frame; raises :class:`ProtocolError` for anything else."""
    size = len(data) if isinstance(data, bytes) else len(data.encode())
    if size > max_bytes:
        raise LimitExceeded(
            f"event of {size} bytes exceeds the limit of {max_bytes} bytes",
            code="message_too_large",
        )
    try:
        event = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError("invalid JSON: nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of 4300+ digits
        raise ProtocolError(f"invalid JSON: {exc}", code="invalid_json") from None
    if lone_surrogate(event):
        raise ProtocolError(LONE_SURROGATE, code="invalid_json")
    if not isinstance(event, dict):
        raise ProtocolError("an event must be a JSON object", code="invalid_event")
    event_id = event.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise ProtocolError("event_id must be a string", code="invalid_type", param="event_id")
    if not isinstance(event.get("type"), str):
        raise ProtocolError(
            "missing required parameter 'type'",
            code="missing_required_parameter",
            event_id=event_id,
            param="type",
        )
    return event


LONE_SURROGATE = "invalid JSON: a string holds a lone surrogate escape (\\ud800-\\udfff), not text"


def lone_surrogate(value: Any) -> bool:
    """Whether a string in parsed JSON (keys included) holds a lone surrogate: ``"\\ud800"`` is
    valid JSON but no text; it cannot be encoded, so it would fail wherever it is stored, logged
    or counted in bytes. Iterative: a value nested a thousand deep does not recurse."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def field(
    obj: dict[str, Any],
    key: str,
    kind: type[T] | tuple[type, ...],
    *,
    path: str = "",
    default: Any = _MISSING,
) -> T:
    """``obj[key]`` checked against ``kind``; a missing key is an error unless ``default``."""
    name = f"{path}.{key}" if path else key
    if key not in obj:
        if default is _MISSING:
            raise ProtocolError(
                f"missing required parameter '{name}'",
                code="missing_required_parameter",
                param=name,
            )
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        expected = " or ".join(k.__name__ for k in kinds)
        raise ProtocolError(
            f"invalid type for '{name}': expected {expected}, got {type(value).__name__}",
            code="invalid_type",
            param=name,
        )
    return value


def number(
    obj: dict[str, Any],
    key: str,
    kind: type[N],
    low: N,
    high: N,
    *,
    path: str = "",
    default: Any = _MISSING,
) -> N:
    """A finite number in ``[low, high]`` (an ``int`` where ``kind`` is ``int``; a ``float``
    accepts integers too); anything else is an ``invalid_value`` naming the parameter."""
    if key not in obj and default is not _MISSING:
        return default
    name = f"{path}.{key}" if path else key
    value = field(obj, key, (int, float) if kind is float else int, path=path)
    if not low <= value <= high:  # also refuses NaN
        raise ProtocolError(
            f"'{name}' must be between {low} and {high}, got {short_repr(value)}",
            code="invalid_value",
            param=name,
        )
    return kind(value)


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} digits)"
