"""What a session record holds, and how its records become one session again.

A session is stored as a row (id, transport, start, end, close reason) and an append-only list
of records, each ``(seq, at, kind, payload)``, written as they happen. :func:`assemble` replays
them into what ``GET /v1/sessions/{id}`` returns. Pure: no I/O, the same for every backend.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pipeline.context import Item


class Kind(enum.StrEnum):
    ITEM = "item"
    """An item joined the conversation or changed (its transcript came, it finished): the
    payload holds its id and the fields that are known, ``previous_item_id`` where it goes."""
    ITEM_TRUNCATED = "item_truncated"
    ITEM_DELETED = "item_deleted"
    RESPONSE_DONE = "response_done"
    METRICS = "metrics"
    ERROR = "error"
    CLOSED = "closed"


@dataclass(slots=True, frozen=True)
class Record:
    seq: int
    """Per session, from 0, without gaps unless records were dropped."""
    at: float
    """Wall-clock time (Unix seconds) the session emitted it."""
    kind: Kind
    payload: dict[str, Any]


@dataclass(slots=True, frozen=True)
class SessionRow:
    id: str
    transport: str
    started_at: float
    ended_at: float | None = None
    close_reason: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "transport": self.transport,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "close_reason": self.close_reason,
        }


def item_fields(item: Item) -> dict[str, Any]:
    """An item as a record's payload (only the fields its type uses)."""
    fields: dict[str, Any] = {
        "id": item.id,
        "type": item.type,
        "role": item.role,
        "status": item.status,
        "text": item.text,
    }
    if item.audio:
        fields["audio_ms"] = item.audio_ms
    if item.type != "message":
        fields["call_id"] = item.call_id
    if item.type == "function_call":
        fields |= {"name": item.name, "arguments": item.arguments}
    return fields


def assemble(row: SessionRow, records: list[Record]) -> dict[str, Any]:
    """The session as the API returns it: its items in conversation order (deleted ones left
    out and listed apart), truncations, tool calls with their outputs, responses, metrics,
    errors, and how it ended. ``missing_records`` counts records that were never written."""
    items: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    out: dict[str, list[dict[str, Any]]] = {
        "deleted": [],
        "truncations": [],
        "responses": [],
        "metrics": [],
        "errors": [],
    }
    expected = 0
    missing = 0
    for record in sorted(records, key=lambda r: r.seq):
        missing += max(0, record.seq - expected)
        expected = record.seq + 1
        payload = record.payload
        if record.kind is Kind.ITEM:
            _place(items, order, payload)
        elif record.kind is Kind.ITEM_TRUNCATED:
            _truncate(items, payload)
            out["truncations"].append({**payload, "at": record.at})
        elif record.kind is Kind.ITEM_DELETED:
            if items.pop(payload["item_id"], None) is not None:
                order.remove(payload["item_id"])
            out["deleted"].append({**payload, "at": record.at})
        elif record.kind is Kind.RESPONSE_DONE:
            out["responses"].append({**payload, "at": record.at})
        elif record.kind is Kind.METRICS:
            out["metrics"].append({**payload, "at": record.at})
        elif record.kind is Kind.ERROR:
            out["errors"].append({**payload, "at": record.at})
    listed = [items[i] for i in order]
    return {
        **row.summary(),
        "items": listed,
        "tool_calls": _tool_calls(listed),
        **out,
        "missing_records": missing,
    }


def _place(items: dict[str, dict[str, Any]], order: list[str], payload: dict[str, Any]) -> None:
    fields = {k: v for k, v in payload.items() if k != "previous_item_id"}
    item_id = fields["id"]
    if item_id in items:
        items[item_id].update(fields)
        return
    items[item_id] = fields
    previous = payload.get("previous_item_id")
    if previous in items:
        order.insert(order.index(previous) + 1, item_id)
    else:
        order.append(item_id)


def _truncate(items: dict[str, dict[str, Any]], payload: dict[str, Any]) -> None:
    item = items.get(payload["item_id"])
    if item is not None:
        item.update(status="incomplete", text=payload.get("text", item.get("text", "")))
        item["audio_ms"] = payload["audio_end_ms"]


def _tool_calls(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = {i["call_id"]: i["text"] for i in items if i["type"] == "function_call_output"}
    return [
        {
            "item_id": i["id"],
            "call_id": i["call_id"],
            "name": i.get("name", ""),
            "arguments": i.get("arguments", ""),
            "status": i["status"],
            "output": outputs.get(i["call_id"]),
        }
        for i in items
        if i["type"] == "function_call"
    ]
