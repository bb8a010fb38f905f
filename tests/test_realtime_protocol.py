"""The Realtime protocol without a socket: client frames in, server events out.

Every server event produced here is validated strictly against the SDK's models.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.session import Session, SessionLimits, SessionSettings, Tuning
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection

from .fakes import fake_engines, silence, tone
from .harness import Harness
from .realtime_schema import validate_server_event


def connection(settings: SessionSettings | None = None, **limits: Any) -> RealtimeConnection:
    session = Session(
        fake_engines(["hello"], ["Hi there."]),
        settings or SessionSettings(),
        limits=SessionLimits(**limits),
    )
    return RealtimeConnection(
        session, RealtimeConfig("voice-local", session.settings), max_event_bytes=65536
    )


def send(conn: RealtimeConnection, event: dict[str, Any] | str) -> list[dict[str, Any]]:
    out = conn.receive(event if isinstance(event, str) else json.dumps(event))
    for server_event in out:
        validate_server_event(server_event)
    return out


def b64(samples: np.ndarray) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


def only_error(out: list[dict[str, Any]]) -> dict[str, Any]:
    assert [e["type"] for e in out] == ["error"], out
    return out[0]["error"]


async def test_session_created_shows_openai_defaults() -> None:
    conn = connection()
    (created,) = conn.hello()
    validate_server_event(created)
    audio = created["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["input"]["turn_detection"]["type"] == "server_vad"


async def test_session_update_changes_formats_vad_instructions_and_voice() -> None:
    conn = connection()
    (updated,) = send(
        conn,
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    },
                    "output": {"format": {"type": "audio/pcma"}, "voice": "marin"},
                },
            },
        },
    )
    assert updated["type"] == "session.updated"
    s = conn.session.settings
    assert (s.instructions, s.voice, s.output_rate) == ("Be brief.", "joe", 8000)  # mapped
    assert updated["session"]["audio"]["output"]["voice"] == "marin"  # as the client chose
    assert s.turn_detection is not None and s.turn_detection.silence_duration_ms == 300
    assert conn.config.input_format.type == "audio/pcmu"
    (off,) = send(
        conn, {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
    )
    assert off["session"]["audio"]["input"]["turn_detection"] is None
    assert conn.session.settings.turn_detection is None


async def test_beta_names_are_accepted() -> None:
    conn = connection()
    (updated,) = send(
        conn,
        {
            "type": "session.update",
            "session": {"input_audio_format": "g711_ulaw", "turn_detection": None},
        },
    )
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ('["a list"]', "invalid_event", None),
        ('{"event_id": "e1"}', "missing_required_parameter", "type"),
        ('{"type": "no.such.event", "event_id": "e2"}', "unknown_event", "type"),
        ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": 12}', "invalid_type", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "%%%not base64%%%"}', "invalid_audio", "audio"),
        ('{"type": "input_audio_buffer.append", "audio": "AAEC"}', "invalid_audio", None),  # 3 bytes
        ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/mp3"}}}}}', "invalid_value", "session.audio.input.format"),
        ('{"type": "session.update", "session": {"bogus": 1}}', "unknown_parameter", "session.bogus"),
        ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}}}', "invalid_value", "session.audio.input.turn_detection.threshold"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "robot", "content": []}}', "invalid_value", "item.role"),
        ('{"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 10}', "item_truncate_invalid_item_id", "item_id"),
        ('{"type": "response.cancel"}', "response_cancel_not_active", None),
        ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty", None),
        ('{"type": "x", "pad": "' + "a" * 70_000 + '"}', "message_too_large", None),
    ],
)  # fmt: skip
async def test_bad_input_gets_a_clear_error_and_the_session_goes_on(
    frame: str, code: str, param: str | None
) -> None:
    conn = connection()
    error = only_error(send(conn, frame))
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    assert conn.session.closed_reason is None
    # the session still works: a valid event is accepted
    assert send(conn, {"type": "input_audio_buffer.append", "audio": b64(silence(0.02))}) == []


async def test_errors_carry_the_client_event_id() -> None:
    conn = connection()
    error = only_error(send(conn, {"type": "response.cancel", "event_id": "evt_42"}))
    assert error["event_id"] == "evt_42"


async def test_audio_faster_than_real_time_gets_an_error() -> None:
    conn = connection(max_pending_input_ms=1000)
    chunk = {"type": "input_audio_buffer.append", "audio": b64(silence(0.5, rate=24_000))}
    assert send(conn, chunk) == [] and send(conn, chunk) == []
    error = only_error(send(conn, chunk))
    assert error["code"] == "input_audio_rate_exceeded"


async def test_a_turn_renders_as_valid_openai_events() -> None:
    engines = fake_engines(["what time is it"], ["It is noon."])
    async with Harness(engines) as h:
        conn = RealtimeConnection(
            h.session,
            RealtimeConfig("voice-local", h.session.settings),
            max_event_bytes=1 << 20,
            extensions=True,
        )
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.TurnMetrics)
        rendered = [e for _, ev in h.events for e in conn.render(ev)]
    for event in rendered:
        validate_server_event(event)
    types = [e["type"] for e in rendered if e["type"] != "response.output_audio.delta"]
    assert types == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "x.voice.turn.metrics",
    ]
    done = rendered[-2]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == "It is noon."


async def test_streaming_asr_renders_interim_transcripts_before_the_commit() -> None:
    engines = fake_engines(["what time", "what time is it"], ["It is noon."])
    async with Harness(engines, tuning=Tuning(interim_asr_ms=400)) as h:
        conn = RealtimeConnection(
            h.session,
            RealtimeConfig("voice-local", h.session.settings),
            max_event_bytes=1 << 20,
            extensions=True,
        )
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.TurnMetrics)
        rendered = [e for _, ev in h.events for e in conn.render(ev)]
    for event in rendered:
        validate_server_event(event)
    types = [e["type"] for e in rendered]
    interim = types.index("x.voice.input_audio_transcription.interim")
    assert types.index("input_audio_buffer.speech_started") < interim
    assert interim < types.index("input_audio_buffer.committed")
    started = rendered[types.index("input_audio_buffer.speech_started")]
    assert rendered[interim]["item_id"] == started["item_id"]
    assert rendered[interim]["transcript"] == "what time"


async def test_client_items_text_and_audio_join_the_conversation() -> None:
    engines = fake_engines(["a spoken note"], ["Noted."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = RealtimeConnection(
            h.session, RealtimeConfig("voice-local", h.session.settings), max_event_bytes=1 << 20
        )
        out = send(
            conn,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "typed words"}],
                },
            },
        )
        assert out == []
        audio = b64(tone(0.5, rate=24_000))
        send(
            conn,
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "item_audio",
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": audio}],
                },
            },
        )
        await h.clock.advance(0.02)
        error = only_error(
            send(
                conn,
                {
                    "type": "conversation.item.create",
                    "previous_item_id": "nope",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "x"}],
                    },
                },
            )
        )
        assert error["param"] == "previous_item_id"
        send(conn, {"type": "response.create"})
        await h.feed_until(silence(0.02), m.ReplyDone)
        rendered = [e for _, ev in h.events for e in conn.render(ev)]
    for event in rendered:
        validate_server_event(event)
    transcripts = [
        e for e in rendered if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    assert [(e["item_id"], e["transcript"]) for e in transcripts] == [
        ("item_audio", "a spoken note")
    ]
    prompt = [(msg.role, msg.content) for msg in engines.llm.seen[0][1:]]
    assert prompt == [("user", "typed words"), ("user", "a spoken note")]
