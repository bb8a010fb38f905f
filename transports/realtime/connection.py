"""One Realtime client's protocol state, without a socket.

The adapter hands every text frame to :meth:`RealtimeConnection.receive` (which applies it to the
session and returns the server events to send at once — errors, ``session.updated``) and sends
whatever :meth:`RealtimeConnection.next_events` renders from the session's events. The same
object serves the WebSocket endpoint and the WebRTC data channel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline import messages as m
from pipeline.context import Item
from pipeline.errors import ProtocolError
from pipeline.session import Session

from .config import RealtimeConfig
from .events import error_event, event_id
from .events import make_event as _e
from .formats import AudioFormat, decode_base64
from .items import parse_item, render_item
from .response_request import parse_response
from .responses import ResponseRenderer
from .validate import field, number, parse_event, short_repr

__all__ = ["RealtimeConnection", "error_event", "event_id", "render_item"]

log = logging.getLogger("voice.realtime")
MAX_AUDIO_END_MS = 24 * 3600 * 1000

METRICS_EVENT = "x.voice.turn.metrics"
"""Extension event: the stage timings of one response, after its ``response.done``."""
HELD_EVENT = "x.voice.output_audio.held"
"""Extension event: the agent's voice is held (the caller may be cutting in); nothing of the
response named is sent until ``x.voice.output_audio.resumed`` or its end. A WebRTC client may
mute what it has already received (its jitter buffer plays on otherwise): the page does."""
RESUMED_EVENT = "x.voice.output_audio.resumed"
"""Extension event: the hold is over, the response goes on (it was not an interruption)."""
INTERIM_EVENT = "x.voice.input_audio_transcription.interim"
"""Extension event: the caller's words so far, while they speak (``pipeline.interim_asr_ms``);
the item it names is announced (``conversation.item.added``) only when the turn is committed.

Extension events go only to clients that ask for them (``x_voice_events=1`` on the URL): the
openai SDK validates every server event and logs an error for each one it does not know."""
MAX_FAILED_KEPT = 64
"""Failed transcriptions remembered until their item's transcript (see ``_r_transcript``)."""
ROOT = "root"
"""``previous_item_id`` that inserts an item at the start of the conversation."""

Event = dict[str, Any]
_FIELDS = {
    "session.update": {"session"},
    "input_audio_buffer.append": {"audio"},
    "conversation.item.create": {"previous_item_id", "item"},
    "conversation.item.delete": {"item_id"},
    "conversation.item.truncate": {"item_id", "content_index", "audio_end_ms"},
    "conversation.item.retrieve": {"item_id"},
    "response.create": {"response"},
    "response.cancel": {"response_id"},
}
"""Each client event's fields besides ``type`` and ``event_id`` (none where not listed);
any other is refused by name (``unknown_parameter``), as OpenAI does."""


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
        self._failed: dict[str, None] = {}
        """User items whose transcription failed: their (empty) ``completed`` is not sent."""
        self._rooted: set[str] = set()
        """Items inserted at the start (``previous_item_id`` ``root``), not yet announced."""
        self.responses = ResponseRenderer(self)
        """Each response's events; its output format is fixed when it starts (a
        ``session.update`` that changes the format applies from the next response)."""
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
        self.session.heard_from_client()
        client_event_id = None
        try:
            event = parse_event(data, self.max_event_bytes)
            client_event_id = event.get("event_id")
            handler = self._handlers.get(event["type"])
            if handler is None:
                raise ProtocolError(
                    f"unknown event type {event['type']!r}", code="unknown_event", param="type"
                )
            unknown = sorted(set(event) - {"type", "event_id"} - _FIELDS.get(event["type"], set()))
            if unknown:
                raise ProtocolError(
                    f"unknown parameter '{unknown[0]}'", code="unknown_parameter", param=unknown[0]
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
        wire = data if fmt.type == self.session.settings.wire_format else None
        self.session.append_audio(fmt.decode(data), fmt.rate, wire)
        return []

    def _commit(self, event: Event) -> list[Event]:
        self.session.commit_audio()
        return []

    def _clear(self, event: Event) -> list[Event]:
        self.session.clear_audio()
        return []

    def _item_create(self, event: Event) -> list[Event]:
        previous: str | None = field(event, "previous_item_id", (str, type(None)), default=None)
        item, audio = parse_item(field(event, "item", dict), self.config.input_format)
        if item.type == "function_call_output":
            self._check_call_id(item.call_id)
        after = None if previous == ROOT else previous
        if audio is not None:
            self.session.add_audio_item(item, audio, self.config.input_format.rate, after)
        else:
            self.session.add_item(item, after)
        if previous == ROOT:
            self._move_to_start(item)
        return []

    def _check_call_id(self, call_id: str) -> None:
        calls = {i.call_id for i in self.session.conversation.items if i.type == "function_call"}
        if call_id not in calls:
            raise ProtocolError(
                f"no function call with call_id {short_repr(call_id)} in the conversation",
                code="unknown_call_id",
                param="item.call_id",
            )

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
        try:
            self.session.truncate_item(item_id, content_index, audio_end_ms)
        except ProtocolError as exc:
            if exc.code == "item_truncate_invalid_item_id":
                exc.param = exc.param or "item_id"
            raise
        return []

    def _response_create(self, event: Event) -> list[Event]:
        response = field(event, "response", dict, default={})
        self.session.create_response(parse_response(response, self.config, self._item_for))
        return []

    def _item_for(self, raw: Any, path: str) -> Item:
        """An item of ``response.input``: a new item, or ``{"type": "item_reference", "id"}``."""
        if isinstance(raw, dict) and raw.get("type") == "item_reference":
            item_id = field(raw, "id", str, path=path)
            found = self.session.conversation.get(item_id)
            if found is None:
                raise ProtocolError(
                    f"item {item_id!r} does not exist", code="item_not_found", param=f"{path}.id"
                )
            return found
        item, audio = parse_item(raw, self.config.input_format, path)
        if audio is not None:
            raise ProtocolError(
                "audio in response.input is not supported here: create the item first",
                code="unsupported_value",
                param=f"{path}.content",
            )
        return item

    def _response_cancel(self, event: Event) -> list[Event]:
        response_id = field(event, "response_id", str, default=None)
        if response_id is not None:
            out_of_band = self.responses.out_of_band(response_id)
            if out_of_band is None:
                raise ProtocolError(
                    f"no response {short_repr(response_id)} is in progress",
                    code="response_cancel_not_active",
                    param="response_id",
                )
            if out_of_band:
                raise ProtocolError(
                    "cancelling an out-of-band response is not supported here; it ends by itself",
                    code="unsupported_value",
                    param="response_id",
                )
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
        if not self._transcription_events(ev.item_id):
            return []
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
        out = []
        if ev.delta and self.config.transcription is not None:
            out.append(
                _e(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=ev.item_id,
                    content_index=0,
                    delta=ev.delta,
                )
            )
        if self.extensions:
            out.append(_e(INTERIM_EVENT, item_id=ev.item_id, transcript=ev.transcript))
        return out

    def _r_reply_started(self, ev: m.ReplyStarted) -> list[Event]:
        return self.responses.started(ev)

    def _r_audio(self, ev: m.ReplyAudio) -> list[Event]:
        return self.responses.audio(ev)

    def _r_text(self, ev: m.ReplyText) -> list[Event]:
        return self.responses.text(ev)

    def _r_call_started(self, ev: m.CallStarted) -> list[Event]:
        return self.responses.call_started(ev)

    def _r_call_arguments(self, ev: m.CallArguments) -> list[Event]:
        return self.responses.call_arguments(ev)

    def _r_call_done(self, ev: m.CallDone) -> list[Event]:
        return self.responses.call_done(ev)

    def _r_reply_done(self, ev: m.ReplyDone) -> list[Event]:
        return self.responses.done(ev)

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

    def _r_held(self, ev: m.ReplyHeld) -> list[Event]:
        if not self.extensions:
            return []
        return [_e(HELD_EVENT if ev.held else RESUMED_EVENT, response_id=ev.response_id)]

    def _r_error(self, ev: m.SessionError) -> list[Event]:
        return [error_event(ev.message, ev.code, ev.type, ev.event_id, ev.param)]

    def _r_closed(self, ev: m.SessionClosed) -> list[Event]:
        self.closed = True
        return []

    # ------------------------------------------------------------ what responses show

    def output_format(self) -> AudioFormat:
        return self.config.output_format

    def voice(self) -> str:
        return self.config.voice

    def max_output_tokens(self) -> int:
        return self.config.settings.generation.max_tokens

    def conversation_id(self) -> str:
        return f"conv_{self.session.id.removeprefix('sess_')}"

    def item(self, item_id: str) -> Item | None:
        return self.session.conversation.get(item_id)

    def previous(self, item_id: str) -> str | None:
        return self._previous(item_id)

    def _previous(self, item_id: str) -> str | None:
        items = self.session.conversation.items
        for i, item in enumerate(items):
            if item.id == item_id:
                return items[i - 1].id if i else None
        return None

    # ------------------------------------------------------------ input transcription, idle

    def _transcription_events(self, item_id: str) -> bool:
        """Whether the item's ``completed`` goes out: not with transcription off, nor after
        its ``failed`` (a transcription ends one way or the other, as at OpenAI)."""
        if item_id in self._failed:
            del self._failed[item_id]
            return False
        return self.config.transcription is not None

    def _r_transcription_failed(self, ev: m.TranscriptionFailed) -> list[Event]:
        if self.config.transcription is None:  # no transcription events: say it as an error
            return [error_event(ev.message, ev.code, "server_error", None, None)]
        self._failed[ev.item_id] = None
        while len(self._failed) > MAX_FAILED_KEPT:  # an item deleted before its transcript
            del self._failed[next(iter(self._failed))]
        return [
            _e(
                "conversation.item.input_audio_transcription.failed",
                item_id=ev.item_id,
                content_index=0,
                error={
                    "type": "transcription_error",
                    "code": ev.code,
                    "message": ev.message,
                    "param": None,
                },
            )
        ]

    def _r_dtmf(self, ev: m.DtmfReceived) -> list[Event]:
        # (OpenAI's event has no event_id: the SDK's model knows none)
        return [
            {
                "type": "input_audio_buffer.dtmf_event_received",
                "event": ev.digit,
                "received_at": ev.received_at,
            }
        ]

    def _r_idle_timeout(self, ev: m.IdleTimeout) -> list[Event]:
        return [
            _e(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=ev.audio_start_ms,
                audio_end_ms=ev.audio_end_ms,
                item_id=ev.item_id,
            )
        ]


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
    m.CallStarted: RealtimeConnection._r_call_started,
    m.CallArguments: RealtimeConnection._r_call_arguments,
    m.CallDone: RealtimeConnection._r_call_done,
    m.ItemTruncated: RealtimeConnection._r_truncated,
    m.ItemDeleted: RealtimeConnection._r_deleted,
    m.TurnMetrics: RealtimeConnection._r_metrics,
    m.ReplyHeld: RealtimeConnection._r_held,
    m.SessionError: RealtimeConnection._r_error,
    m.SessionClosed: RealtimeConnection._r_closed,
    m.TranscriptionFailed: RealtimeConnection._r_transcription_failed,
    m.IdleTimeout: RealtimeConnection._r_idle_timeout,
    m.DtmfReceived: RealtimeConnection._r_dtmf,
}
