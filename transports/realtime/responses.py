"""A response's events on the wire, in the order and with the output indices OpenAI uses.

``response.created`` first; each output item (the spoken or written message, each function call)
is announced when it has something in it — a reply that is only a function call has no message —
and takes the next ``output_index``; its deltas, then its ``.done`` events; ``response.done``
lists the items in that order, with ``usage``, the client's ``metadata`` and why it ended.
An out-of-band response (``conversation: "none"``) never names the conversation.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline import messages as m
from pipeline.audio import Resampler
from pipeline.context import Item

from .events import make_event as _e
from .formats import AudioFormat
from .items import render_item

Event = dict[str, Any]
_REASONS = ("turn_detected", "client_cancelled", "max_output_tokens", "content_filter")


@dataclass(slots=True)
class _Open:
    info: m.ResponseInfo
    format: AudioFormat
    resampler: Resampler | None = None
    order: list[str] = field(default_factory=list)
    """Announced item ids, by output index."""


class ResponseRenderer:
    """Renders the response events of one connection. ``context`` gives what the events carry
    besides the session's messages (the conversation, the formats, the voice)."""

    def __init__(self, context: ResponseContext) -> None:
        self._context = context
        self._open: dict[str, _Open] = {}

    def format_of(self, response_id: str) -> AudioFormat | None:
        open_ = self._open.get(response_id)
        return open_.format if open_ else None

    def out_of_band(self, response_id: str) -> bool | None:
        """Whether a response in progress is out of band; None: none has that id."""
        open_ = self._open.get(response_id)
        return open_.info.out_of_band if open_ else None

    def started(self, ev: m.ReplyStarted) -> list[Event]:
        self._open[ev.response_id] = _Open(ev.info, self._context.output_format())
        return [_e("response.created", response=self._response(ev.response_id, "in_progress"))]

    def text(self, ev: m.ReplyText) -> list[Event]:
        open_ = self._open.get(ev.response_id)
        if open_ is None:
            return []
        kind = "response.output_text.delta" if open_.info.text_only else None
        out = self._announce_message(ev.response_id, ev.item_id)
        ids = self._ids(ev.response_id, ev.item_id) | {"content_index": 0}
        return [*out, _e(kind or "response.output_audio_transcript.delta", delta=ev.delta, **ids)]

    def audio(self, ev: m.ReplyAudio) -> list[Event]:
        open_ = self._open.get(ev.response_id)
        if open_ is None:
            return []
        out = self._announce_message(ev.response_id, ev.item_id)
        audio = ev.audio
        if ev.rate != open_.format.rate:  # a speculative reply made before the format changed
            if open_.resampler is None:
                open_.resampler = Resampler(ev.rate, open_.format.rate)
            audio = open_.resampler.process(audio)
        delta = base64.b64encode(open_.format.encode(audio)).decode()
        ids = self._ids(ev.response_id, ev.item_id) | {"content_index": 0}
        return [*out, _e("response.output_audio.delta", delta=delta, **ids)]

    def call_started(self, ev: m.CallStarted) -> list[Event]:
        return self._announce(ev.response_id, ev.item)

    def call_arguments(self, ev: m.CallArguments) -> list[Event]:
        if ev.response_id not in self._open:
            return []
        ids = self._ids(ev.response_id, ev.item_id)
        return [
            _e("response.function_call_arguments.delta", call_id=ev.call_id, delta=ev.delta, **ids)
        ]

    def call_done(self, ev: m.CallDone) -> list[Event]:
        item = ev.item
        if ev.response_id not in self._open:
            return []
        ids = self._ids(ev.response_id, item.id)
        return [
            _e(
                "response.function_call_arguments.done",
                call_id=item.call_id,
                name=item.name,
                arguments=item.arguments,
                **ids,
            ),
            *self._finish_item(ev.response_id, item),
        ]

    def done(self, ev: m.ReplyDone) -> list[Event]:
        open_ = self._open.get(ev.response_id)
        if open_ is None:
            return []
        out: list[Event] = []
        item = ev.item
        if item is not None and item.id in open_.order:
            out += self._finish_message(ev.response_id, item, open_)
        by_id = {i.id: i for i in ev.calls}
        if item is not None:
            by_id[item.id] = item
        output = [render_item(by_id[i]) for i in open_.order if i in by_id]
        response = self._response(ev.response_id, ev.status, output)
        response["status_details"] = _status_details(ev)
        if ev.usage is not None:
            response["usage"] = {
                "input_tokens": ev.usage.input_tokens,
                "output_tokens": ev.usage.output_tokens,
                "total_tokens": ev.usage.input_tokens + ev.usage.output_tokens,
            }
        del self._open[ev.response_id]
        return [*out, _e("response.done", response=response)]

    # ------------------------------------------------------------ items

    def _announce_message(self, response_id: str, item_id: str) -> list[Event]:
        open_ = self._open[response_id]
        if item_id in open_.order:
            return []
        item = self._context.item(item_id)
        if item is None:  # deleted by the client, or out of band
            item = Item(item_id, "assistant", audio=not open_.info.text_only, status="in_progress")
        out = self._announce(response_id, item)
        part = {"type": "text", "text": ""} if open_.info.text_only else {"type": "audio"}
        if not open_.info.text_only:
            part["transcript"] = ""
        ids = self._ids(response_id, item_id) | {"content_index": 0}
        return [*out, _e("response.content_part.added", part=part, **ids)]

    def _announce(self, response_id: str, item: Item) -> list[Event]:
        open_ = self._open.get(response_id)
        if open_ is None:
            return []
        open_.order.append(item.id)
        rendered = render_item(item)
        out = [
            _e(
                "response.output_item.added",
                response_id=response_id,
                output_index=len(open_.order) - 1,
                item=rendered,
            )
        ]
        if not open_.info.out_of_band:
            previous = self._context.previous(item.id)
            out.append(_e("conversation.item.added", previous_item_id=previous, item=rendered))
        return out

    def _finish_message(self, response_id: str, item: Item, open_: _Open) -> list[Event]:
        ids = self._ids(response_id, item.id) | {"content_index": 0}
        if open_.info.text_only:
            return [
                _e("response.output_text.done", text=item.text, **ids),
                _e("response.content_part.done", part={"type": "text", "text": item.text}, **ids),
                *self._finish_item(response_id, item),
            ]
        return [
            _e("response.output_audio.done", **ids),
            _e("response.output_audio_transcript.done", transcript=item.text, **ids),
            _e(
                "response.content_part.done",
                part={"type": "audio", "transcript": item.text},
                **ids,
            ),
            *self._finish_item(response_id, item),
        ]

    def _finish_item(self, response_id: str, item: Item) -> list[Event]:
        open_ = self._open[response_id]
        rendered = render_item(item)
        out = []
        if not open_.info.out_of_band:
            previous = self._context.previous(item.id)
            out.append(_e("conversation.item.done", previous_item_id=previous, item=rendered))
        index = open_.order.index(item.id)
        out.append(
            _e(
                "response.output_item.done",
                response_id=response_id,
                output_index=index,
                item=rendered,
            )
        )
        return out

    def _ids(self, response_id: str, item_id: str) -> dict[str, Any]:
        open_ = self._open[response_id]
        index = open_.order.index(item_id) if item_id in open_.order else 0
        return {"response_id": response_id, "item_id": item_id, "output_index": index}

    def _response(self, response_id: str, status: str, output: list[Event] | None = None) -> Event:
        open_ = self._open.get(response_id)
        info = open_.info if open_ else m.ResponseInfo()
        fmt = open_.format if open_ else self._context.output_format()
        response: Event = {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "output": output or [],
            "conversation_id": None if info.out_of_band else self._context.conversation_id(),
            "output_modalities": ["text"] if info.text_only else ["audio"],
            "max_output_tokens": info.max_output_tokens or self._context.max_output_tokens(),
            "audio": {
                "output": {
                    "format": fmt.describe(),
                    "voice": info.voice or self._context.voice(),
                }
            },
        }
        if info.metadata is not None:
            response["metadata"] = info.metadata
        return response


class ResponseContext(Protocol):
    """What the renderer reads from the connection (a small seam, easy to fake)."""

    def output_format(self) -> AudioFormat: ...

    def voice(self) -> str: ...

    def max_output_tokens(self) -> int: ...

    def conversation_id(self) -> str: ...

    def item(self, item_id: str) -> Item | None: ...

    def previous(self, item_id: str) -> str | None: ...


def _status_details(ev: m.ReplyDone) -> dict[str, Any]:
    details: dict[str, Any] = {"type": ev.status}
    if ev.status in ("cancelled", "incomplete"):
        reason = ev.reason if ev.reason in _REASONS else "client_cancelled"
        details["reason"] = reason
    elif ev.status == "failed":
        details["error"] = {"type": "server_error", "code": "engine_error", "message": ev.reason}
    return details
