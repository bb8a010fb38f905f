"""The upstream codecs, fed what a broken or hostile upstream could send (hypothesis,
deterministic): any frame either gives typed events or is refused with ``UpstreamFailure``,
never anything else (a bug would end the relay in a way the fallback does not see)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.handoff.base import UpstreamFailure, UpstreamSettings
from pipeline.handoff.gemini_live import GeminiLiveCodec
from pipeline.handoff.openai_realtime import OpenAiRealtimeCodec

FUZZ = settings(
    max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
OPENAI_TYPES = [
    "session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.committed",
    "conversation.item.input_audio_transcription.completed", "response.created",
    "response.output_audio.delta", "response.output_audio_transcript.delta",
    "response.output_item.added", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.done", "error",
]  # fmt: skip
OPENAI_FIELDS = [
    "item_id", "response_id", "delta", "transcript", "response", "item", "output_index",
    "call_id", "arguments", "error", "audio_start_ms",
]  # fmt: skip
GEMINI_KEYS = [
    "setupComplete", "serverContent", "toolCall", "sessionResumptionUpdate", "server_content",
    "tool_call", "setup_complete",
]  # fmt: skip
GEMINI_FIELDS = [
    "modelTurn", "parts", "inlineData", "mimeType", "data", "turnComplete", "interrupted",
    "inputTranscription", "outputTranscription", "text", "functionCalls", "id", "name", "args",
    "newHandle", "resumable",
]  # fmt: skip


def survives(codec: Any, frame: str | bytes) -> None:
    with contextlib.suppress(UpstreamFailure):  # (refused: fine; anything else fails)
        codec.receive(frame)


@FUZZ
@given(st.sampled_from(OPENAI_TYPES), st.dictionaries(st.sampled_from(OPENAI_FIELDS), JSON))
def test_openai_frames_parse_or_are_refused(kind: str, fields: dict[str, Any]) -> None:
    survives(OpenAiRealtimeCodec(UpstreamSettings("x")), json.dumps({"type": kind, **fields}))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_bytes_to_either_codec(data: str | bytes) -> None:
    survives(OpenAiRealtimeCodec(UpstreamSettings("x")), data)
    survives(GeminiLiveCodec(UpstreamSettings("x")), data)


def nested(depth: int) -> Any:
    keys = st.sampled_from(GEMINI_FIELDS)
    if depth == 0:
        return JSON
    return st.dictionaries(keys, nested(depth - 1) | st.lists(nested(depth - 1), max_size=3))


@FUZZ
@given(st.dictionaries(st.sampled_from(GEMINI_KEYS), nested(3), min_size=1))
def test_gemini_frames_parse_or_are_refused(message: dict[str, Any]) -> None:
    codec = GeminiLiveCodec(UpstreamSettings("x"))
    survives(codec, json.dumps(message))
    survives(codec, json.dumps(message))  # (a second one, on the state the first left)
