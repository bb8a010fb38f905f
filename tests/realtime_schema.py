"""Strict validation of server events against the official SDK's own models.

The ``openai`` SDK does not validate what it receives, so this does: every event must parse as
``openai.types.realtime.RealtimeServerEvent`` in pydantic's strict mode, and no object in it may
carry a field the SDK does not know (its models accept extras silently).
"""

from __future__ import annotations

from typing import Any

from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

from pipeline.metrics import REPORTED
from transports.realtime.connection import HELD_EVENT, INTERIM_EVENT, METRICS_EVENT, RESUMED_EVENT

_ADAPTER: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)
_METRICS = {*REPORTED, "overhead"}


def validate_server_event(event: dict[str, Any]) -> None:
    if event.get("type") == METRICS_EVENT:
        assert set(event) == {"type", "event_id", "response_id", "item_id", "metrics_ms"}, event
        assert set(event["metrics_ms"]) == _METRICS, event
        return
    if event.get("type") == INTERIM_EVENT:
        assert set(event) == {"type", "event_id", "item_id", "transcript"}, event
        assert isinstance(event["transcript"], str) and event["transcript"], event
        return
    if event.get("type") in (HELD_EVENT, RESUMED_EVENT):
        assert set(event) == {"type", "event_id", "response_id"}, event
        return
    model = _ADAPTER.validate_python(event, strict=True)
    assert model.type == event["type"]
    _no_extras(model, event["type"])


def _no_extras(value: Any, where: str) -> None:
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: fields unknown to the SDK: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _no_extras(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_extras(item, f"{where}.{key}")
