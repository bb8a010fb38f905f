"""Gemini Live (``BidiGenerateContent`` over a WebSocket) as a client speaks it, sans I/O.

Client messages: ``setup`` first (model, system instruction, tools, voice, transcription,
turn detection, a session resumption handle), then ``realtimeInput`` (16 kHz PCM; with this
server's turn detection framed by ``activityStart``/``activityEnd``), ``clientContent``
(text turns, the history) and ``toolResponse``. Server messages: ``setupComplete``,
``serverContent`` (``modelTurn`` audio at 24 kHz, ``inputTranscription``,
``outputTranscription``, ``interrupted``, ``turnComplete``), ``toolCall``,
``toolCallCancellation``, ``sessionResumptionUpdate``, ``goAway``, ``usageMetadata``.

Field names are read in both spellings the official SDK knows (``serverContent`` and
``server_content``; arguments and responses of functions are left as they are). Gemini has no
response or item ids: this codec numbers the model's turns (``gemini_resp_<n>``) and the
caller's (``gemini_user_<n>``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ..audio import pcm16_from_bytes
from ..context import Item
from .base import (
    GEMINI_LIVE,
    AudioDelta,
    CallDelta,
    InputCommitted,
    Interrupted,
    Ready,
    ResponseDone,
    ResponseStarted,
    Resumption,
    SessionSetup,
    SpeechStarted,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
    UpstreamSettings,
    UserTranscript,
)

INPUT_RATE = 16_000
OUTPUT_RATE = 24_000
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
"""The Live API's WebSocket path under its host, as published (the SDK of late asks for
``v1`` in place of ``v1beta``)."""
_VERBATIM = frozenset({"args", "response", "parameters"})
"""Keys whose values are the user's own data: never re-spelled."""
_IGNORED = frozenset({"usageMetadata", "goAway", "toolCallCancellation"})

Message = dict[str, Any]


def camel(value: Any) -> Any:
    """``value`` with every ``snake_case`` key spelled ``camelCase`` (the data of functions
    kept as is)."""
    if isinstance(value, list):
        return [camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = re.sub(r"_([a-z0-9])", lambda mt: mt.group(1).upper(), key)
        out[name] = item if name in _VERBATIM else camel(item)
    return out


class GeminiLiveCodec:
    """Client messages out, typed events in, for one upstream connection."""

    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.resumption_handle = ""
        """Sent in ``setup`` to resume an upstream session (set from the last update)."""
        self._upstream_vad = True
        self._in_activity = False
        self._answers_by_itself = False  # after a turn's end or a tool's output
        self._turns = 0
        self._users = 0
        self._response: str | None = None
        self._heard = ""  # the caller's words of the turn so far (input transcription)
        self._user: str | None = None
        self._calls: dict[str, str] = {}  # call id → function name

    # ------------------------------------------------------------ connection

    def url(self) -> str:
        return self.settings.url

    def headers(self) -> dict[str, str]:
        """The API key as the official SDK sends it."""
        return {"x-goog-api-key": self.settings.key} if self.settings.key else {}

    # ------------------------------------------------------------ requests

    def setup(self, setup: SessionSetup) -> list[str]:
        self._upstream_vad = setup.upstream_vad
        generation: Message = {"responseModalities": ["AUDIO"]}
        if self.settings.voice:
            voice = {"prebuiltVoiceConfig": {"voiceName": self.settings.voice}}
            generation["speechConfig"] = {"voiceConfig": voice}
        body: Message = {
            "model": _model(self.settings.model),
            "generationConfig": generation,
            "systemInstruction": {"parts": [{"text": setup.instructions}]},
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
            "realtimeInputConfig": {
                "automaticActivityDetection": {"disabled": not setup.upstream_vad}
            },
            "sessionResumption": (
                {"handle": self.resumption_handle} if self.resumption_handle else {}
            ),
        }
        if setup.tools:
            declarations = [
                {"name": t.name, "description": t.description, "parameters": t.parameters}
                for t in setup.tools
            ]
            body["tools"] = [{"functionDeclarations": declarations}]
        frames = [_dump({"setup": body})]
        if self.resumption_handle:
            return frames  # (a resumed session has the conversation)
        turns = [turn for item in setup.history if (turn := _turn(item)) is not None]
        if turns:
            frames.append(_dump({"clientContent": {"turns": turns, "turnComplete": False}}))
        return frames

    def audio(self, pcm: bytes) -> list[str]:
        frames = []
        if not self._upstream_vad and not self._in_activity:
            self._in_activity = True
            frames.append(_dump({"realtimeInput": {"activityStart": {}}}))
        blob = {"data": base64.b64encode(pcm).decode(), "mimeType": f"audio/pcm;rate={INPUT_RATE}"}
        return [*frames, _dump({"realtimeInput": {"audio": blob}})]

    def wire(self, payload: bytes) -> list[str] | None:
        return None  # (Gemini Live takes 16 kHz PCM only)

    def commit(self) -> list[str]:
        self._in_activity = False
        self._answers_by_itself = True
        return [_dump({"realtimeInput": {"activityEnd": {}}})]

    def respond(self, instructions: str | None, tool_choice: str | None = None) -> list[str]:
        """Gemini answers an ended turn (``activityEnd``) and a tool's output by itself: then
        nothing is sent; otherwise the turn so far is completed, which asks for an answer."""
        if self._answers_by_itself:
            self._answers_by_itself = False
            return []
        return [_dump({"clientContent": {"turnComplete": True}})]

    def cancel(self, response_id: str) -> list[str]:
        return []  # (the caller's speech interrupts the model upstream: nothing to say)

    def truncate(self, item_id: str, audio_ms: int) -> list[str]:
        return []  # (the Live API keeps no items to cut)

    def add_item(self, item: Item) -> list[str]:
        if item.type == "function_call_output":
            self._answers_by_itself = True
            response = {
                "id": item.call_id,
                "name": self._calls.pop(item.call_id, ""),
                "response": _output(item.text),
            }
            return [_dump({"toolResponse": {"functionResponses": [response]}})]
        turn = _turn(item)
        if turn is None:
            return []
        return [_dump({"clientContent": {"turns": [turn], "turnComplete": False}})]

    # ------------------------------------------------------------ events

    def receive(self, data: str | bytes) -> list[UpstreamEvent]:
        try:
            message = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise self._malformed(f"invalid JSON: {exc}") from None
        if not isinstance(message, dict):
            raise self._malformed("a message must be a JSON object")
        message = camel(message)
        events: list[UpstreamEvent] = []
        known = False
        for key, handler in self._handlers():
            if key in message:
                known = True
                body = message[key]
                if not isinstance(body, dict):
                    raise self._malformed(f"{key} must be an object")
                events += handler(body)
        if not known and not set(message) & _IGNORED:
            events.append(Unknown(",".join(sorted(message))[:80] or "{}"))
        return events

    def _handlers(self) -> list[tuple[str, Any]]:
        return [
            ("setupComplete", self._setup_complete),
            ("serverContent", self._server_content),
            ("toolCall", self._tool_call),
            ("sessionResumptionUpdate", self._resumption),
        ]

    def _malformed(self, why: str) -> UpstreamFailure:
        return UpstreamFailure(
            f"malformed message from the upstream: {why}", engine=GEMINI_LIVE, retryable=False
        )

    def _setup_complete(self, body: Message) -> list[UpstreamEvent]:
        return [Ready()]

    def _server_content(self, body: Message) -> list[UpstreamEvent]:
        events: list[UpstreamEvent] = []
        heard = body.get("inputTranscription")
        if isinstance(heard, dict) and isinstance(heard.get("text"), str):
            self._heard += heard["text"]
        if body.get("interrupted") is True:
            events += self._interrupted()
        turn = body.get("modelTurn")
        parts = turn.get("parts", []) if isinstance(turn, dict) else []
        if not isinstance(parts, list):
            raise self._malformed("modelTurn.parts must be a list")
        said = body.get("outputTranscription")
        text = said.get("text") if isinstance(said, dict) else None
        if parts or isinstance(text, str):
            events += self._started()
        rid = self._response or ""
        if isinstance(text, str) and text:
            events.append(TextDelta(rid, f"{rid}_item", text))
        for part in parts:
            events += self._part(rid, part)
        if body.get("turnComplete") is True:
            events += self._flush_user()
            if self._response is not None:
                events.append(ResponseDone(self._response, "completed"))
                self._response = None
        return events

    def _part(self, rid: str, part: Any) -> list[UpstreamEvent]:
        blob = part.get("inlineData") if isinstance(part, dict) else None
        if not isinstance(blob, dict):
            return []  # (text parts of a thought, say: the transcription is the words)
        mime = blob.get("mimeType", "")
        if not isinstance(mime, str) or not mime.startswith("audio/pcm"):
            raise self._malformed(f"unexpected audio format {str(mime)[:40]!r}")
        if f"rate={OUTPUT_RATE}" not in mime and "rate=" in mime:
            raise self._malformed(f"audio at {mime!r}: the Live API speaks at {OUTPUT_RATE} Hz")
        try:
            pcm = base64.b64decode(blob.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise self._malformed("inlineData.data is not base64") from None
        return [AudioDelta(rid, f"{rid}_item", pcm16_from_bytes(pcm[: len(pcm) // 2 * 2]))]

    def _started(self) -> list[UpstreamEvent]:
        if self._response is not None:
            return []
        events = self._flush_user()
        self._turns += 1
        self._response = f"gemini_resp_{self._turns}"
        return [*events, ResponseStarted(self._response)]

    def _flush_user(self) -> list[UpstreamEvent]:
        """The caller's words of this turn, once the model answers (or the turn ends)."""
        if not self._heard.strip():
            self._heard = ""
            return []
        self._users += 1
        item_id = self._user or f"gemini_user_{self._users}"
        text, self._heard, self._user = self._heard.strip(), "", None
        return [InputCommitted(item_id), UserTranscript(item_id, text)]

    def _interrupted(self) -> list[UpstreamEvent]:
        """The caller spoke over the model: its turn is over (a barge-in here)."""
        events: list[UpstreamEvent] = []
        self._user = f"gemini_user_{self._users + 1}"
        events.append(SpeechStarted(self._user))
        if self._response is not None:
            events += [
                Interrupted(self._response),
                ResponseDone(self._response, "cancelled", "turn_detected"),
            ]
            self._response = None
        return events

    def _tool_call(self, body: Message) -> list[UpstreamEvent]:
        calls = body.get("functionCalls")
        if not isinstance(calls, list) or not calls:
            raise self._malformed("toolCall.functionCalls must be a non-empty list")
        events = self._started()
        rid = self._response or ""
        for index, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise self._malformed("a function call needs a name")
            given = call.get("id")
            call_id = given if isinstance(given, str) and given else f"{rid}_call_{index}"
            self._calls[call_id] = call["name"]
            arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
            events.append(CallDelta(rid, index, call_id, call["name"], arguments))
        events.append(ResponseDone(rid, "completed"))  # (the model waits for the outputs)
        self._response = None
        return events

    def _resumption(self, body: Message) -> list[UpstreamEvent]:
        handle = body.get("newHandle")
        if body.get("resumable") is False or not isinstance(handle, str) or not handle:
            return []
        self.resumption_handle = handle
        return [Resumption(handle)]


def _model(name: str) -> str:
    return name if name.startswith(("models/", "tunedModels/")) else f"models/{name}"


def _turn(item: Item) -> Message | None:
    """An item of the conversation as a ``clientContent`` turn (None: nothing to carry)."""
    role = "model" if item.role == "assistant" else "user"
    if item.type == "function_call":
        if item.status != "completed":
            return None
        try:
            args = json.loads(item.arguments or "{}")
        except ValueError:
            args = {}
        return {"role": "model", "parts": [{"functionCall": {"name": item.name, "args": args}}]}
    if item.type == "function_call_output":
        response = {"name": item.name or item.call_id, "response": _output(item.text)}
        return {"role": "user", "parts": [{"functionResponse": response}]}
    if not item.text.strip() or item.status == "in_progress":
        return None
    return {"role": role, "parts": [{"text": item.text}]}


def _output(text: str) -> Any:
    """A function's output as the Live API wants it: an object."""
    try:
        value = json.loads(text)
    except ValueError:
        return {"output": text}
    return value if isinstance(value, dict) else {"output": value}


def _dump(message: Message) -> str:
    return json.dumps(message, ensure_ascii=False)
