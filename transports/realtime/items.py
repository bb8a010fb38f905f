"""Conversation items on the wire: a client's ``item`` object in, the Realtime item shape out.

Three item types: ``message`` (text, or a user's ``input_audio``), ``function_call`` and
``function_call_output``. Audio bytes are never echoed back: an audio message shows its
transcript.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.context import Item, new_id
from pipeline.errors import ProtocolError

from .formats import AudioFormat, decode_base64
from .validate import field

Event = dict[str, Any]
_ROLES = ("user", "assistant", "system")
_TEXT_PARTS = ("input_text", "text", "output_text")
_COMMON_KEYS = {"type", "id", "object", "status"}
"""``object`` (always ``realtime.item``) and ``status`` ("has no effect on the conversation",
OpenAI's reference) are accepted and ignored: clients echo them from the server's items."""
_ITEM_KEYS = {
    "message": _COMMON_KEYS | {"role", "content"},
    "function_call": _COMMON_KEYS | {"call_id", "name", "arguments"},
    "function_call_output": _COMMON_KEYS | {"call_id", "output"},
}


def parse_item(raw: Any, input_format: AudioFormat, path: str = "item") -> tuple[Item, Any]:
    """The :class:`Item` a client sent, and its audio (int16 at ``input_format.rate``) if it is
    a user message with ``input_audio`` (else None). Raises :class:`ProtocolError` naming the
    field at fault."""
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path} must be an object", code="invalid_type", param=path)
    kind = field(raw, "type", str, path=path, default="message")
    item_id = field(raw, "id", str, path=path, default=None) or new_id("item")
    _refuse_unknown(raw, _ITEM_KEYS.get(kind, raw.keys()), path)
    if raw.get("object", "realtime.item") != "realtime.item":
        raise ProtocolError(
            f"{path}.object must be 'realtime.item'", code="invalid_value", param=f"{path}.object"
        )
    if kind == "function_call":
        arguments = field(raw, "arguments", str, path=path, default="{}")
        return Item(
            item_id,
            "assistant",
            type="function_call",
            call_id=field(raw, "call_id", str, path=path, default=None) or new_id("call"),
            name=field(raw, "name", str, path=path),
            arguments=arguments,
        ), None
    if kind == "function_call_output":
        return Item(
            item_id,
            "tool",
            type="function_call_output",
            call_id=field(raw, "call_id", str, path=path),
            text=field(raw, "output", str, path=path),
        ), None
    if kind != "message":
        raise ProtocolError(
            f"item type {kind!r} is not supported: use message, function_call or"
            " function_call_output",
            code="unsupported_value",
            param=f"{path}.type",
        )
    role = field(raw, "role", str, path=path)
    if role not in _ROLES:
        raise ProtocolError(f"invalid role {role!r}", code="invalid_value", param=f"{path}.role")
    texts, audio = _content(field(raw, "content", list, path=path), role, input_format, path)
    return Item(item_id, role, text=" ".join(texts)), audio


def _content(
    content: list[Any], role: str, input_format: AudioFormat, path: str
) -> tuple[list[str], np.ndarray | None]:
    texts: list[str] = []
    audio = None
    for i, part in enumerate(content):
        where = f"{path}.content[{i}]"
        if not isinstance(part, dict):
            raise ProtocolError(f"{where} must be an object", code="invalid_type", param=where)
        kind = field(part, "type", str, path=where)
        if kind in _TEXT_PARTS:
            _refuse_unknown(part, {"type", "text"}, where)
            texts.append(field(part, "text", str, path=where))
        elif kind == "input_audio" and role == "user":
            _refuse_unknown(part, {"type", "audio", "transcript"}, where)
            if part.get("transcript"):
                raise ProtocolError(
                    f"{where}.transcript is not supported here: the server transcribes the audio"
                    " itself, and that transcript is what the model reads",
                    code="unsupported_parameter",
                    param=f"{where}.transcript",
                )
            data = decode_base64(field(part, "audio", str, path=where), f"{where}.audio")
            audio = input_format.decode(data)
        else:
            raise ProtocolError(
                f"unsupported content type {kind!r}",
                code="unsupported_value",
                param=f"{where}.type",
            )
    return texts, audio


def _refuse_unknown(obj: dict[str, Any], known: Any, path: str) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        raise ProtocolError(
            f"unknown parameter '{path}.{unknown[0]}'",
            code="unknown_parameter",
            param=f"{path}.{unknown[0]}",
        )


def render_item(item: Item) -> Event:
    """An item as the Realtime API shows it."""
    head = {"id": item.id, "object": "realtime.item", "status": item.status}
    if item.type == "function_call":
        return head | {
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }
    if item.type == "function_call_output":
        return head | {"type": "function_call_output", "call_id": item.call_id, "output": item.text}
    if item.role == "assistant":
        part: Event = (
            {"type": "output_audio", "transcript": item.text}
            if item.audio
            else {"type": "output_text", "text": item.text}
        )
    elif item.role == "user" and item.audio:
        part = {"type": "input_audio", "transcript": item.text or None}
    else:
        part = {"type": "input_text", "text": item.text}
    return head | {"type": "message", "role": item.role, "content": [part]}
