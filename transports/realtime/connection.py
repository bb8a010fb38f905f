"""One Realtime client's protocol state, without a socket.

The adapter hands every text frame to :meth:`RealtimeConnection.receive` (which applies it to the
session and returns the server events to send at once — errors, ``session.updated``) and sends
whatever :meth:`RealtimeConnection.next_events` renders from the session's events. The same
object serves the WebSocket endpoint and the WebRTC data channel.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Callable
from typing import Any

from pipeline import messages as m
from pipeline.audio import Resampler
from pipeline.context import Item, new_id
from pipeline.errors import ProtocolError
from pipeline.session import Session

from .config import RealtimeConfig
from .formats import AudioFormat, decode_base64
from .validate import field, number, parse_event, short_repr

log = logging.getLogger("voice.realtime")
MAX_AUDIO_END_MS = 24 * 3600 * 1000

METRICS_EVENT = "x.voice.turn.metrics"
"""Extension event: the stage timings of one response, after its ``response.done``."""
INTERIM_EVENT = "x.voice.input_audio_transcription.interim"
"""Extension event: the caller's words so far, while they speak (``pipeline.interim_asr_ms``);
the item it names is announced (``conversation.item.added``) only when the turn is committed.

Extension events go only to clients that ask for them (``x_voice_events=1`` on the URL): the
openai SDK validates every server event and logs an error for each one it does not know."""
ROOT = "root"
"""``previous_item_id`` that inserts an item at the start of the conversation."""

Event = dict[str, Any]


def event_id() -> str:
    return f"event_{secrets.token_hex(10)}"


class RealtimeConnection:
    """``extensions``: send the ``x.voice.*`` events (``METRICS_EVENT``, ``INTERIM_EVENT``).
    ``clear_output``: set by a transport that plays the audio itself (WebRTC): it empties that
    output for ``output_audio_buffer.clear`` and returns the events to send; without it the event
    is refused (the client holds the audio, as on a WebSocket)."""

    def __init__(
        self,
        session: Session,
        config: RealtimeConfig,
        *,
        max_event_bytes: int,
        extensions: bool = False,
    ) -> None:
        self.session = session
        self.config = config
        self.max_event_bytes = max_event_bytes
        self.extensions = extensions
        self.clear_output: Callable[[], list[Event]] | None = None
        self.closed = False
        self._rooted: set[str] = set()
        """Items inserted at the start (``previous_item_id`` ``root``), not yet announced."""
        self._formats: dict[str, AudioFormat] = {}
        """Each response's output format, fixed when it starts: a ``session.update`` that
        changes the format applies from the next response."""
        self._resamplers: dict[str, Resampler] = {}
        session.settings = config.settings
        self._handlers: dict[str, Callable[[Event], list[Event]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.retrieve": self._item_retrieve,
            "output_audio_buffer.clear": self._output_clear,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # ------------------------------------------------------------ client → server

    def hello(self) -> list[Event]:
        return [
            {"type": "session.created", "event_id": event_id(), "session": self.config.describe()}
        ]

    def receive(self, data: str | bytes) -> list[Event]:
        """Apply one client frame; returns the events to send now (an ``error`` on bad input)."""
        client_event_id = None
        try:
            event = parse_event(data, self.max_event_bytes)
            client_event_id = event.get("event_id")
            handler = self._handlers.get(event["type"])
            if handler is None:
                raise ProtocolError(
                    f"unknown event type {event['type']!r}", code="unknown_event", param="type"
                )
            return handler(event)
        except ProtocolError as exc:
            return [
                error_event(str(exc), exc.code, "invalid_request_error", client_event_id, exc.param)
            ]
        except Exception as exc:  # a bug: the client still gets an answer, the session goes on
            self.session.log.exception("cannot handle a client event")
            return [
                error_event(
                    f"internal error handling this event: {type(exc).__name__}",
                    "internal_error",
                    "server_error",
                    client_event_id if isinstance(client_event_id, str) else None,
                    None,
                )
            ]

    def apply_session(self, session: Any) -> None:
        """Apply a session object as ``session.update`` does (all or nothing); raises
        :class:`ProtocolError`. Also serves the ``session`` part of ``POST /v1/realtime/calls``."""
        self.config.apply_update(session)
        self.session.update(self.config.settings)

    def _session_update(self, event: Event) -> list[Event]:
        self.apply_session(field(event, "session", dict))
        return [
            {"type": "session.updated", "event_id": event_id(), "session": self.config.describe()}
        ]

    def _append(self, event: Event) -> list[Event]:
        data = decode_base64(field(event, "audio", str), "audio")
        fmt = self.config.input_format
        self.session.append_audio(fmt.decode(data), fmt.rate)
        return []

    def _commit(self, event: Event) -> list[Event]:
        self.session.commit_audio()
        return []

    def _clear(self, event: Event) -> list[Event]:
        self.session.clear_audio()
        return []

    def _item_create(self, event: Event) -> list[Event]:
        raw = field(event, "item", dict)
        previous: str | None = field(event, "previous_item_id", (str, type(None)), default=None)
        if field(raw, "type", str, path="item", default="message") != "message":
            raise ProtocolError(
                "only items of type 'message' are supported",
                code="unsupported_value",
                param="item.type",
            )
        role = field(raw, "role", str, path="item")
        if role not in ("user", "assistant", "system"):
            raise ProtocolError(f"invalid role {role!r}", code="invalid_value", param="item.role")
        item_id = field(raw, "id", str, path="item", default=None) or new_id("item")
        content = field(raw, "content", list, path="item")
        texts: list[str] = []
        audio = None
        for i, part in enumerate(content):
            path = f"item.content[{i}]"
            if not isinstance(part, dict):
                raise ProtocolError(f"{path} must be an object", code="invalid_type", param=path)
            kind = field(part, "type", str, path=path)
            if kind in ("input_text", "text", "output_text"):
                texts.append(field(part, "text", str, path=path))
            elif kind == "input_audio" and role == "user":
                data = decode_base64(field(part, "audio", str, path=path), f"{path}.audio")
                audio = self.config.input_format.decode(data)
            else:
                raise ProtocolError(
                    f"unsupported content type {kind!r}",
                    code="unsupported_value",
                    param=f"{path}.type",
                )
        item = Item(item_id, role, text=" ".join(texts))
        after = None if previous == ROOT else previous
        if audio is not None:
            self.session.add_audio_item(item, audio, self.config.input_format.rate, after)
        else:
            self.session.add_item(item, after)
        if previous == ROOT:
            self._move_to_start(item)
        return []

    def _move_to_start(self, item: Item) -> None:
        """The session appends; an item created after ``root`` then moves to the front (its
        ``conversation.item.added``, queued meanwhile, is rendered with no previous item)."""
        items = self.session.conversation.items
        if len(items) > 1 and items[-1] is item:
            items.insert(0, items.pop())
            self._rooted.add(item.id)

    def _item_retrieve(self, event: Event) -> list[Event]:
        item_id = field(event, "item_id", str)
        item = self.session.conversation.get(item_id)
        if item is None:
            raise ProtocolError(
                f"item {item_id!r} does not exist", code="item_not_found", param="item_id"
            )
        return [_e("conversation.item.retrieved", item=render_item(item))]

    def _output_clear(self, event: Event) -> list[Event]:
        if self.clear_output is None:
            raise ProtocolError(
                "output_audio_buffer.clear is for WebRTC connections, where the server plays the"
                " audio; on a WebSocket use response.cancel and conversation.item.truncate",
                code="unsupported_event",
                param="type",
            )
        return self.clear_output()

    def _item_delete(self, event: Event) -> list[Event]:
        self.session.delete_item(field(event, "item_id", str))
        return []

    def _item_truncate(self, event: Event) -> list[Event]:
        item_id = field(event, "item_id", str)
        content_index = field(event, "content_index", int, default=0)
        if content_index != 0:
            raise ProtocolError(
                f"content_index {short_repr(content_index)} does not exist: an item has one content"
                " part, at index 0",
                code="invalid_value",
                param="content_index",
            )
        audio_end_ms = number(event, "audio_end_ms", int, 0, MAX_AUDIO_END_MS)
        self.session.truncate_item(item_id, content_index, audio_end_ms)
        return []

    def _response_create(self, event: Event) -> list[Event]:
        response = field(event, "response", dict, default={})
        instructions = field(response, "instructions", str, path="response", default=None)
        modalities = field(response, "output_modalities", list, path="response", default=None)
        if modalities is not None and "audio" not in modalities:
            raise ProtocolError(
                "only audio output is supported",
                code="invalid_value",
                param="response.output_modalities",
            )
        self.session.create_response(instructions)
        return []

    def _response_cancel(self, event: Event) -> list[Event]:
        self.session.cancel_response()
        return []

    # ------------------------------------------------------------ server → client

    async def next_events(self) -> list[Event]:
        """The server events for the session's next event (cancel-safe)."""
        return self.render(await self.session.next_event())

    def render(self, ev: m.SessionEvent) -> list[Event]:
        renderer = _RENDERERS.get(type(ev))
        return renderer(self, ev) if renderer else []

    def _r_speech_started(self, ev: m.SpeechStarted) -> list[Event]:
        return [
            _e(
                "input_audio_buffer.speech_started",
                audio_start_ms=ev.audio_start_ms,
                item_id=ev.item_id,
            )
        ]

    def _r_speech_stopped(self, ev: m.SpeechStopped) -> list[Event]:
        return [
            _e(
                "input_audio_buffer.speech_stopped",
                audio_end_ms=ev.audio_end_ms,
                item_id=ev.item_id,
            )
        ]

    def _r_committed(self, ev: m.InputCommitted) -> list[Event]:
        return [
            _e(
                "input_audio_buffer.committed",
                previous_item_id=ev.previous_item_id,
                item_id=ev.item_id,
            )
        ]

    def _r_cleared(self, ev: m.InputCleared) -> list[Event]:
        return [_e("input_audio_buffer.cleared")]

    def _r_item_added(self, ev: m.ItemAdded) -> list[Event]:
        item = render_item(ev.item)
        previous = ev.previous_item_id
        if ev.item.id in self._rooted:
            self._rooted.discard(ev.item.id)
            previous = None
        out = [_e("conversation.item.added", previous_item_id=previous, item=item)]
        if ev.done:
            out.append(_e("conversation.item.done", previous_item_id=previous, item=item))
        return out

    def _r_transcript(self, ev: m.UserTranscript) -> list[Event]:
        item = self.session.conversation.get(ev.item_id)
        seconds = (item.audio_ms if item else 0) / 1000.0
        return [
            _e(
                "conversation.item.input_audio_transcription.completed",
                item_id=ev.item_id,
                content_index=0,
                transcript=ev.transcript,
                usage={"type": "duration", "seconds": seconds},
            )
        ]

    def _r_interim(self, ev: m.InterimTranscript) -> list[Event]:
        if not self.extensions:
            return []
        return [_e(INTERIM_EVENT, item_id=ev.item_id, transcript=ev.transcript)]

    def _r_reply_started(self, ev: m.ReplyStarted) -> list[Event]:
        self._formats[ev.response_id] = self.config.output_format
        ids = {"response_id": ev.response_id, "output_index": 0}
        item = render_item(ev.item)
        return [
            _e("response.created", response=self._response(ev.response_id, "in_progress", [])),
            _e("response.output_item.added", item=item, **ids),
            _e("conversation.item.added", previous_item_id=self._previous(ev.item.id), item=item),
            _e(
                "response.content_part.added",
                item_id=ev.item.id,
                content_index=0,
                part={"type": "audio", "transcript": ""},
                **ids,
            ),
        ]

    def _r_audio(self, ev: m.ReplyAudio) -> list[Event]:
        fmt = self._formats.get(ev.response_id, self.config.output_format)
        audio = ev.audio
        if ev.rate != fmt.rate:  # a speculative reply made before the format changed
            resampler = self._resamplers.get(ev.response_id)
            if resampler is None:
                resampler = self._resamplers[ev.response_id] = Resampler(ev.rate, fmt.rate)
            audio = resampler.process(audio)
        delta = base64.b64encode(fmt.encode(audio)).decode()
        return [
            _e(
                "response.output_audio.delta",
                response_id=ev.response_id,
                item_id=ev.item_id,
                output_index=0,
                content_index=0,
                delta=delta,
            )
        ]

    def _r_text(self, ev: m.ReplyText) -> list[Event]:
        return [
            _e(
                "response.output_audio_transcript.delta",
                response_id=ev.response_id,
                item_id=ev.item_id,
                output_index=0,
                content_index=0,
                delta=ev.delta,
            )
        ]

    def _r_reply_done(self, ev: m.ReplyDone) -> list[Event]:
        out: list[Event] = []
        item = ev.item
        status_details: dict[str, Any] = {"type": ev.status}
        if ev.status == "cancelled":
            status_details["reason"] = ev.reason or "client_cancelled"
        elif ev.status == "failed":
            status_details["error"] = {
                "type": "server_error",
                "code": "engine_error",
                "message": ev.reason,
            }
        outputs = []
        if item is not None:
            ids = {
                "response_id": ev.response_id,
                "item_id": item.id,
                "output_index": 0,
                "content_index": 0,
            }
            rendered = render_item(item)
            outputs.append(rendered)
            out += [
                _e("response.output_audio.done", **ids),
                _e("response.output_audio_transcript.done", transcript=item.text, **ids),
                _e(
                    "response.content_part.done",
                    part={"type": "audio", "transcript": item.text},
                    **ids,
                ),
                _e(
                    "conversation.item.done",
                    previous_item_id=self._previous(item.id),
                    item=rendered,
                ),
                _e(
                    "response.output_item.done",
                    response_id=ev.response_id,
                    output_index=0,
                    item=rendered,
                ),
            ]
        response = self._response(ev.response_id, ev.status, outputs)
        response["status_details"] = status_details
        self._formats.pop(ev.response_id, None)
        self._resamplers.pop(ev.response_id, None)
        out.append(_e("response.done", response=response))
        return out

    def _r_truncated(self, ev: m.ItemTruncated) -> list[Event]:
        return [
            _e(
                "conversation.item.truncated",
                item_id=ev.item_id,
                content_index=ev.content_index,
                audio_end_ms=ev.audio_end_ms,
            )
        ]

    def _r_deleted(self, ev: m.ItemDeleted) -> list[Event]:
        return [_e("conversation.item.deleted", item_id=ev.item_id)]

    def _r_metrics(self, ev: m.TurnMetrics) -> list[Event]:
        if not self.extensions:
            return []
        return [
            _e(METRICS_EVENT, response_id=ev.response_id, item_id=ev.item_id, metrics_ms=ev.marks)
        ]

    def _r_error(self, ev: m.SessionError) -> list[Event]:
        return [error_event(ev.message, ev.code, ev.type, ev.event_id, ev.param)]

    def _r_closed(self, ev: m.SessionClosed) -> list[Event]:
        self.closed = True
        return []

    def _response(self, response_id: str, status: str, output: list[Event]) -> Event:
        return {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "output": output,
            "conversation_id": f"conv_{self.session.id.removeprefix('sess_')}",
            "output_modalities": ["audio"],
            "max_output_tokens": self.config.settings.generation.max_tokens,
            "audio": {
                "output": {
                    "format": self._formats.get(response_id, self.config.output_format).describe(),
                    "voice": self.config.voice,
                }
            },
        }

    def _previous(self, item_id: str) -> str | None:
        items = self.session.conversation.items
        for i, item in enumerate(items):
            if item.id == item_id:
                return items[i - 1].id if i else None
        return None


_RENDERERS: dict[type, Callable[[RealtimeConnection, Any], list[Event]]] = {
    m.SpeechStarted: RealtimeConnection._r_speech_started,
    m.SpeechStopped: RealtimeConnection._r_speech_stopped,
    m.InputCommitted: RealtimeConnection._r_committed,
    m.InputCleared: RealtimeConnection._r_cleared,
    m.ItemAdded: RealtimeConnection._r_item_added,
    m.UserTranscript: RealtimeConnection._r_transcript,
    m.InterimTranscript: RealtimeConnection._r_interim,
    m.ReplyStarted: RealtimeConnection._r_reply_started,
    m.ReplyAudio: RealtimeConnection._r_audio,
    m.ReplyText: RealtimeConnection._r_text,
    m.ReplyDone: RealtimeConnection._r_reply_done,
    m.ItemTruncated: RealtimeConnection._r_truncated,
    m.ItemDeleted: RealtimeConnection._r_deleted,
    m.TurnMetrics: RealtimeConnection._r_metrics,
    m.SessionError: RealtimeConnection._r_error,
    m.SessionClosed: RealtimeConnection._r_closed,
}


def _e(kind: str, **fields: Any) -> Event:
    return {"type": kind, "event_id": event_id(), **fields}


def error_event(
    message: str, code: str | None, kind: str, client_event_id: str | None, param: str | None
) -> Event:
    return _e(
        "error",
        error={
            "type": kind,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    )


def render_item(item: Item) -> Event:
    """An item as the Realtime API shows it (audio bytes are never echoed back)."""
    status = item.status
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
    return {
        "id": item.id,
        "object": "realtime.item",
        "type": "message",
        "role": item.role,
        "status": status,
        "content": [part],
    }
