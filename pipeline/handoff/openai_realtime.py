"""The OpenAI Realtime protocol (GA) as a client speaks it, sans I/O.

The requests are this server's own client events (``transports/realtime``: the same names and
shapes it accepts), the answers its server events; frames are read with the same validation
(:func:`transports.realtime.validate.parse_event`, typed field access that names the bad
field). Beta event names (``response.audio.delta`` …) are read too.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

from transports import g711
from transports.realtime.validate import field, parse_event

from ..audio import pcm16_from_bytes
from ..context import Item
from ..errors import ProtocolError
from .base import (
    OPENAI_REALTIME,
    AudioDelta,
    CallDelta,
    InputCommitted,
    Ready,
    ResponseDone,
    ResponseStarted,
    SessionSetup,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    Unknown,
    UpstreamError,
    UpstreamEvent,
    UpstreamFailure,
    UpstreamSettings,
    UserTranscript,
)

RATE = 24_000
"""``audio/pcm``: 16-bit mono at 24 kHz, both ways."""
G711_RATE = 8_000
_ENCODE = {"audio/pcmu": g711.ulaw_encode, "audio/pcma": g711.alaw_encode}
_DECODE = {"audio/pcmu": g711.ulaw_decode, "audio/pcma": g711.alaw_decode}

Event = dict[str, Any]

_IGNORED = frozenset(
    {
        "session.created", "conversation.created", "conversation.item.created",
        "conversation.item.added", "conversation.item.done", "conversation.item.retrieved",
        "conversation.item.truncated", "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "conversation.item.input_audio_transcription.failed",
        "input_audio_buffer.cleared", "input_audio_buffer.timeout_triggered",
        "output_audio_buffer.started", "output_audio_buffer.stopped",
        "output_audio_buffer.cleared", "response.output_item.done",
        "response.content_part.added", "response.content_part.done",
        "response.output_audio.done", "response.audio.done",
        "response.output_audio_transcript.done", "response.audio_transcript.done",
        "response.output_text.done", "response.text.done",
        "rate_limits.updated",
        "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
        "x.voice.turn.metrics", "x.voice.input_audio_transcription.interim",
        "x.voice.output_audio.held", "x.voice.output_audio.resumed",
    }
)  # fmt: skip
"""Server events that change nothing here (their content arrives by the events read)."""

_AUDIO = ("response.output_audio.delta", "response.audio.delta")
_TRANSCRIPT = (
    "response.output_audio_transcript.delta",
    "response.audio_transcript.delta",
    "response.output_text.delta",
    "response.text.delta",
)


class OpenAiRealtimeCodec:
    """Client events out, typed events in, for one upstream connection."""

    input_rate = RATE
    output_rate = RATE

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.g711 = ""
        """The G.711 format the upstream was set up with (the caller's, passed through);
        empty: 24 kHz PCM."""
        self._arguments: dict[str, str] = {}
        """Each call's arguments so far, by ``call_id`` (``...done`` completes them)."""
        self._handlers = {
            "session.updated": self._ready,
            "input_audio_buffer.speech_started": self._speech_started,
            "input_audio_buffer.speech_stopped": self._speech_stopped,
            "input_audio_buffer.committed": self._committed,
            "conversation.item.input_audio_transcription.completed": self._transcript,
            "response.created": self._response_created,
            "response.output_item.added": self._output_item,
            "response.function_call_arguments.delta": self._call_arguments,
            "response.function_call_arguments.done": self._call_done,
            "response.done": self._response_done,
            "error": self._error,
            **dict.fromkeys(_AUDIO, self._audio),
            **dict.fromkeys(_TRANSCRIPT, self._text),
        }

    # ------------------------------------------------------------ connection

    def url(self) -> str:
        url = self.settings.url
        if self.settings.model:
            url += ("&" if "?" in url else "?") + urlencode({"model": self.settings.model})
        return url

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.key}"} if self.settings.key else {}

    # ------------------------------------------------------------ requests

    def setup(self, setup: SessionSetup) -> list[str]:
        passthrough = self.settings.g711_passthrough and setup.wire_format in _ENCODE
        self.g711 = setup.wire_format if passthrough else ""
        self.input_rate = self.output_rate = G711_RATE if self.g711 else RATE
        fmt: Event = {"type": self.g711} if self.g711 else {"type": "audio/pcm", "rate": RATE}
        audio_in: Event = {
            "format": fmt,
            "turn_detection": {"type": "server_vad"} if setup.upstream_vad else None,
        }
        if self.settings.transcription_model:
            audio_in["transcription"] = {"model": self.settings.transcription_model}
        audio_out: Event = {"format": dict(fmt)}
        if self.settings.voice:
            audio_out["voice"] = self.settings.voice
        session: Event = {
            "type": "realtime",
            "instructions": setup.instructions,
            "tools": [
                {
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                }
                for t in setup.tools
            ],
            "tool_choice": _choice(setup.tool_choice),
            "audio": {"input": audio_in, "output": audio_out},
        }
        frames = [frame for item in setup.history for frame in self.add_item(item)]
        # last: its ``session.updated`` says the upstream has the whole conversation (Ready)
        return [*frames, _dump({"type": "session.update", "session": session})]

    def audio(self, pcm: bytes) -> list[str]:
        """16-bit PCM at ``input_rate`` (in the G.711 the upstream was set up with, if any)."""
        if self.g711:
            return self._append(_ENCODE[self.g711](pcm16_from_bytes(pcm)))
        return self._append(pcm)

    def wire(self, payload: bytes) -> list[str] | None:
        return self._append(payload) if self.g711 else None

    def _append(self, data: bytes) -> list[str]:
        return [
            _dump({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})
        ]

    def commit(self) -> list[str]:
        return [_dump({"type": "input_audio_buffer.commit"})]

    def respond(self, instructions: str | None, tool_choice: str | None = None) -> list[str]:
        response: Event = {} if instructions is None else {"instructions": instructions}
        if tool_choice is not None:
            response["tool_choice"] = _choice(tool_choice)
        return [_dump({"type": "response.create", "response": response})]

    def cancel(self, response_id: str) -> list[str]:
        return [_dump({"type": "response.cancel", "response_id": response_id})]

    def truncate(self, item_id: str, audio_ms: int) -> list[str]:
        event = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": max(0, audio_ms),
        }
        return [_dump(event)]

    def add_item(self, item: Item) -> list[str]:
        rendered = history_item(item)
        if rendered is None:
            return []
        return [_dump({"type": "conversation.item.create", "item": rendered})]

    # ------------------------------------------------------------ events

    def receive(self, data: str | bytes) -> list[UpstreamEvent]:
        try:
            event = parse_event(data, self.settings.max_message_bytes)
            kind = event["type"]
            if kind in _IGNORED:
                return []
            handler = self._handlers.get(kind)
            return [Unknown(kind)] if handler is None else handler(event)
        except ProtocolError as exc:
            raise UpstreamFailure(
                f"malformed message from the upstream: {exc}",
                engine=OPENAI_REALTIME,
                retryable=False,
            ) from None

    def _ready(self, event: Event) -> list[UpstreamEvent]:
        return [Ready()]

    def _speech_started(self, event: Event) -> list[UpstreamEvent]:
        return [SpeechStarted(field(event, "item_id", str), _ms(event, "audio_start_ms"))]

    def _speech_stopped(self, event: Event) -> list[UpstreamEvent]:
        return [SpeechStopped(field(event, "item_id", str), _ms(event, "audio_end_ms"))]

    def _committed(self, event: Event) -> list[UpstreamEvent]:
        return [InputCommitted(field(event, "item_id", str))]

    def _transcript(self, event: Event) -> list[UpstreamEvent]:
        return [UserTranscript(field(event, "item_id", str), field(event, "transcript", str))]

    def _response_created(self, event: Event) -> list[UpstreamEvent]:
        response = field(event, "response", dict)
        return [ResponseStarted(field(response, "id", str, path="response"))]

    def _audio(self, event: Event) -> list[UpstreamEvent]:
        delta = field(event, "delta", str)
        try:
            pcm = base64.b64decode(delta, validate=True)
        except ValueError:
            raise ProtocolError("delta is not base64", code="invalid_audio") from None
        if self.g711:  # (G.711 decodes exactly: its codes are int16 values)
            samples = _DECODE[self.g711](pcm)
        else:
            samples = pcm16_from_bytes(pcm[: len(pcm) // 2 * 2])
        return [AudioDelta(field(event, "response_id", str), field(event, "item_id", str), samples)]

    def _text(self, event: Event) -> list[UpstreamEvent]:
        return [
            TextDelta(
                field(event, "response_id", str),
                field(event, "item_id", str),
                field(event, "delta", str),
            )
        ]

    def _output_item(self, event: Event) -> list[UpstreamEvent]:
        item = field(event, "item", dict)
        if item.get("type") != "function_call":
            return []
        call_id = field(item, "call_id", str, path="item")
        self._arguments[call_id] = ""  # (they follow in deltas, or whole in ``...done``)
        return [
            CallDelta(
                field(event, "response_id", str),
                field(event, "output_index", int),
                call_id,
                field(item, "name", str, path="item"),
                "",
            )
        ]

    def _call_arguments(self, event: Event) -> list[UpstreamEvent]:
        call_id, delta = field(event, "call_id", str), field(event, "delta", str)
        self._arguments[call_id] = self._arguments.get(call_id, "") + delta
        return [
            CallDelta(
                field(event, "response_id", str),
                field(event, "output_index", int),
                call_id,
                "",
                delta,
            )
        ]

    def _call_done(self, event: Event) -> list[UpstreamEvent]:
        """The whole arguments: what the deltas did not bring is sent now."""
        call_id, whole = field(event, "call_id", str), field(event, "arguments", str)
        sent = self._arguments.pop(call_id, "")
        if not whole.startswith(sent) or whole == sent:
            return []
        return [
            CallDelta(
                field(event, "response_id", str),
                field(event, "output_index", int),
                call_id,
                "",
                whole[len(sent) :],
            )
        ]

    def _response_done(self, event: Event) -> list[UpstreamEvent]:
        response = field(event, "response", dict)
        details = response.get("status_details") or {}
        usage = response.get("usage") or {}
        reason = details.get("reason") if isinstance(details, dict) else None
        return [
            ResponseDone(
                field(response, "id", str, path="response"),
                field(response, "status", str, path="response"),
                reason if isinstance(reason, str) else None,
                _int(usage, "input_tokens"),
                _int(usage, "output_tokens"),
            )
        ]

    def _error(self, event: Event) -> list[UpstreamEvent]:
        error = field(event, "error", dict)
        code = error.get("code")
        return [
            UpstreamError(
                str(error.get("message") or "upstream error"), code if isinstance(code, str) else ""
            )
        ]


def history_item(item: Item) -> Event | None:
    """An item of the conversation as a ``conversation.item.create`` carries it: words as
    text (audio is not sent again: its transcript stands for it), calls and their outputs as
    they were. None for what has nothing to carry (an empty message, an unfinished call)."""
    if item.type == "function_call":
        if item.status != "completed":
            return None
        return {
            "type": "function_call",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }
    if item.type == "function_call_output":
        return {"type": "function_call_output", "call_id": item.call_id, "output": item.text}
    if not item.text.strip() or item.status == "in_progress":
        return None
    kind = "output_text" if item.role == "assistant" else "input_text"
    return {"type": "message", "role": item.role, "content": [{"type": kind, "text": item.text}]}


def _choice(tool_choice: str) -> Any:
    if tool_choice in ("auto", "none", "required"):
        return tool_choice
    return {"type": "function", "name": tool_choice}


def _dump(event: Event) -> str:
    return json.dumps(event, ensure_ascii=False)


def _ms(event: Event, key: str) -> int:
    value = event.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _int(obj: Any, key: str) -> int:
    value = obj.get(key, 0) if isinstance(obj, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
