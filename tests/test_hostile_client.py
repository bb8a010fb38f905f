"""What an attacker or a careless client sends, answered without ending the session.

Regression tests for the defects found by trying the server as a hostile client would: frames
that break the JSON parser, values that were accepted and then broke the session, a format
switched mid-reply, an item deleted while it was spoken, conversations that grow without bound,
and errors that said too little. Every server event is validated against the SDK's models.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import messages as m
from pipeline.context import Item
from pipeline.session import Session, SessionLimits, SessionSettings
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection

from .fakes import fake_engines, silence, tone
from .harness import Harness
from .realtime_schema import validate_server_event

Event = dict[str, Any]


def connection(session: Session | None = None) -> RealtimeConnection:
    session = session or Session(fake_engines(["hello"], ["Hi there."]), SessionSettings())
    return RealtimeConnection(
        session, RealtimeConfig("voice-local", session.settings), max_event_bytes=1 << 20
    )


def send(conn: RealtimeConnection, event: Event | str) -> list[Event]:
    out = conn.receive(event if isinstance(event, str) else json.dumps(event))
    for server_event in out:
        validate_server_event(server_event)
    return out


def only_error(out: list[Event]) -> dict[str, Any]:
    assert [e["type"] for e in out] == ["error"], out
    error: dict[str, Any] = out[0]["error"]
    assert error["code"] and error["code"] != error["type"], error  # a specific code
    assert error["message"]
    return error


def vad(**fields: Any) -> Event:
    return {
        "type": "session.update",
        "session": {"audio": {"input": {"turn_detection": {"type": "server_vad", **fields}}}},
    }


# ---------------------------------------------------------------- frames the parser chokes on


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid_json", None),
        ('{"type": "input_audio_buffer.append", "audio": ' + "[" * 5000 + "]" * 5000 + "}", "invalid_json", None),
        ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": ' + "9" * 5000 + "}", "invalid_json", None),
        ('{"type": "session.update", "session": {"speed": NaN}}', "invalid_json", None),
        ('{"type": "session.update", "session": {"speed": Infinity}}', "invalid_json", None),
        ('{"type": "session.update", "session": {"audio": {"output": {"speed": 1e999}}}}', "invalid_value", "session.audio.output.speed"),
        ('{"type": "session.update", "session": "x"}', "invalid_type", "session"),
        ('{"type": "session.update", "session": {"type": "transcription"}}', "unsupported_value", "session.type"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [1]}}', "invalid_type", "item.content[0]"),
        ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [{"type": "input_image"}]}}', "unsupported_value", "item.content[0].type"),
        ('{"type": "conversation.item.delete", "item_id": "nope"}', "item_not_found", "item_id"),
        ('{"type": "input_audio_buffer.append", "audio": 5, "event_id": 7}', "invalid_type", "event_id"),
    ],
)  # fmt: skip
def test_frames_that_broke_the_parser_get_an_error_and_the_session_goes_on(
    frame: str, code: str, param: str | None
) -> None:
    conn = connection()
    error = only_error(send(conn, frame))
    assert (error["code"], error["param"]) == (code, param)
    assert conn.session.closed_reason is None
    assert send(conn, {"type": "input_audio_buffer.clear"}) == []


# ---------------------------------------------------------------- values that broke the session


@pytest.mark.parametrize(
    ("event", "param"),
    [
        (vad(prefix_padding_ms=10**400), "prefix_padding_ms"),
        (vad(prefix_padding_ms=3_600_000), "prefix_padding_ms"),
        (vad(prefix_padding_ms=-1), "prefix_padding_ms"),
        (vad(silence_duration_ms=10**20), "silence_duration_ms"),
        (vad(threshold=10**400), "threshold"),
        (vad(threshold=1.0), "threshold"),
        (vad(idle_timeout_ms=4999), "idle_timeout_ms"),  # OpenAI's range: 5000-30000
        (vad(idle_timeout_ms=10**400), "idle_timeout_ms"),
        ({"type": "session.update", "session": {"temperature": 5}}, "session.temperature"),
        ({"type": "session.update", "session": {"speed": 10**400}}, "session.speed"),
        ({"type": "session.update", "session": {"max_output_tokens": 10**400}}, "session.max_output_tokens"),
    ],
)  # fmt: skip
def test_out_of_range_settings_are_refused_by_name(event: Event, param: str) -> None:
    conn = connection()
    before = conn.config.describe()
    error = only_error(send(conn, event))
    assert error["code"] in ("invalid_value", "unsupported_parameter")
    assert error["param"].endswith(param)
    assert conn.config.describe() == before  # all or nothing


def test_in_range_settings_take_effect() -> None:
    conn = connection()
    send(conn, vad(prefix_padding_ms=2000, silence_duration_ms=800, threshold=0.6))
    send(conn, {"type": "session.update", "session": {"temperature": 0.8}})
    td = conn.session.settings.turn_detection
    assert td is not None
    assert (td.prefix_padding_ms, td.silence_duration_ms, td.threshold) == (2000, 800, 0.6)
    assert conn.session.settings.generation.temperature == 0.8


@pytest.mark.parametrize("content_index", [99, -5, 1])
def test_a_truncate_of_a_content_part_that_does_not_exist_is_refused(content_index: int) -> None:
    error = only_error(
        send(
            connection(),
            {
                "type": "conversation.item.truncate",
                "item_id": "item_x",
                "content_index": content_index,
                "audio_end_ms": 0,
            },
        )
    )
    assert (error["code"], error["param"]) == ("invalid_value", "content_index")


class _BrokenVad:
    window = 512

    def stream(self) -> _BrokenVad:
        return self

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        raise OverflowError("int too large to convert to float")


async def test_a_session_whose_input_task_dies_says_so_and_ends_with_a_reason() -> None:
    engines = fake_engines(["hello"], ["Hi."])
    engines.vad = _BrokenVad()
    async with Harness(engines) as h:
        await h.feed(tone(0.1))
        await h.feed_until(silence(0.02), m.SessionClosed)
    (error,) = h.of(m.SessionError)
    assert error.code == "internal_error" and "OverflowError" in error.message
    (closed,) = h.of(m.SessionClosed)
    assert "internal error" in closed.reason
    assert h.session.failed


# ---------------------------------------------------------------- the reply in flight


class _Live:
    """Render events as they happen, so client events land between them."""

    def __init__(self, h: Harness, conn: RealtimeConnection) -> None:
        self.h, self.conn, self.seen, self.out = h, conn, 0, []

    def pull(self) -> list[Event]:
        new = [e for _, ev in self.h.events[self.seen :] for e in self.conn.render(ev)]
        self.seen = len(self.h.events)
        for event in new:
            validate_server_event(event)
        self.out += new
        return new


def _deltas(events: list[Event]) -> list[bytes]:
    return [
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    ]


async def test_an_output_format_change_applies_from_the_next_response() -> None:
    engines = fake_engines(["hi"], ["One two three four five six seven eight."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = connection(h.session)
        live = _Live(h, conn)
        send(conn, {"type": "response.create"})
        while not _deltas(live.pull()):
            await h.clock.advance(0.02)
        pcmu = {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}
        send(conn, {"type": "session.update", "session": pcmu})
        await h.feed_until(silence(0.02), m.ReplyDone)
        first = live.pull()
        send(conn, {"type": "response.create"})
        await h.feed_until(silence(0.02), m.TurnMetrics, limit_s=60)
        while len(h.of(m.ReplyDone)) < 2:
            await h.clock.advance(0.02)
        second = live.pull()
    # 20 ms frames: 960 bytes of 24 kHz PCM16, then 160 bytes of 8 kHz μ-law
    assert {len(d) for d in _deltas(first)} == {960}
    assert {len(d) for d in _deltas(second)} == {160}
    done = [e["response"] for e in live.out if e["type"] == "response.done"]
    assert [r["audio"]["output"]["format"]["type"] for r in done] == ["audio/pcm", "audio/pcmu"]


def test_a_reply_made_at_another_rate_is_resampled_to_its_format() -> None:
    """A speculative reply prepared at 24 kHz, adopted after the client chose μ-law."""
    conn = connection()
    conn.config.apply_update({"audio": {"output": {"format": {"type": "audio/pcmu"}}}})
    conn.render(m.ReplyStarted("resp_1", Item("item_1", "assistant", audio=True)))
    sent = b"".join(
        base64.b64decode(e["delta"])
        for _ in range(10)
        for e in conn.render(m.ReplyAudio("resp_1", "item_1", tone(0.02, 24_000), 24_000))
        if e["type"] == "response.output_audio.delta"
    )
    assert 1400 <= len(sent) <= 1600  # 200 ms at 8 kHz, less the resampler's delay


async def test_deleting_the_item_being_spoken_ends_its_reply_and_nothing_names_it_again() -> None:
    engines = fake_engines(["hi"], ["One two three four five six seven eight nine ten."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = connection(h.session)
        live = _Live(h, conn)
        send(conn, {"type": "response.create"})
        while not _deltas(live.pull()):
            await h.clock.advance(0.02)
        item_id = h.of(m.ReplyStarted)[0].item.id
        assert send(conn, {"type": "conversation.item.delete", "item_id": item_id}) == []
        await h.feed_until(silence(0.02), m.ReplyDone)
        for _ in range(50):
            await h.clock.advance(0.02)
        events = live.pull()
    deleted = next(i for i, e in enumerate(events) if e["type"] == "conversation.item.deleted")
    after = events[deleted + 1 :]
    assert all(item_id not in json.dumps(e) for e in after), after
    (done,) = [e["response"] for e in after if e["type"] == "response.done"]
    assert done["status"] == "cancelled" and done["output"] == []
    assert h.session.conversation.get(item_id) is None


async def test_a_truncate_refused_as_out_of_range_does_not_cancel_the_reply() -> None:
    engines = fake_engines(["hi"], ["One two three four five six."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = connection(h.session)
        live = _Live(h, conn)
        send(conn, {"type": "response.create"})
        while not _deltas(live.pull()):
            await h.clock.advance(0.02)
        item_id = h.of(m.ReplyStarted)[0].item.id
        truncate = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 600_000,
        }
        assert only_error(send(conn, truncate))["param"] == "audio_end_ms"
        await h.feed_until(silence(0.02), m.ReplyDone)
    (done,) = h.of(m.ReplyDone)
    assert done.status == "completed"


async def test_the_transcript_of_a_deleted_user_item_names_nothing() -> None:
    engines = fake_engines(["a late transcript"], ["Hi."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = connection(h.session)
        audio = base64.b64encode(tone(0.5, 24_000).astype("<i2").tobytes()).decode()
        item = {"id": "item_a", "type": "message", "role": "user"}
        item["content"] = [{"type": "input_audio", "audio": audio}]  # type: ignore[assignment]
        send(conn, {"type": "conversation.item.create", "item": item})
        send(conn, {"type": "conversation.item.delete", "item_id": "item_a"})
        for _ in range(10):
            await h.clock.advance(0.02)
    assert h.of(m.UserTranscript) == []
    assert [e.item_id for e in h.of(m.ItemDeleted)] == ["item_a"]


# ---------------------------------------------------------------- memory and logs


def _text_item(text: str, item_id: str | None = None) -> Event:
    item: Event = {"type": "message", "role": "user"}
    item["content"] = [{"type": "input_text", "text": text}]
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item}


def test_a_sessions_text_has_a_byte_budget_with_a_clear_error() -> None:
    session = Session(
        fake_engines(["x"], ["y"]),
        SessionSettings(),
        limits=SessionLimits(max_conversation_bytes=10_000),
    )
    conn = connection(session)
    for i in range(3):
        assert send(conn, _text_item("é" * 1500, f"item_{i}")) == []  # 3,000 bytes each
    error = only_error(send(conn, _text_item("é" * 1500)))
    assert (error["code"], error["param"]) == ("conversation_too_large", "item")
    assert "10000" in error["message"]
    assert len(session.conversation.items) == 3
    send(conn, {"type": "conversation.item.delete", "item_id": "item_0"})
    assert send(conn, _text_item("é" * 1500)) == []  # room again


def test_the_log_summary_of_a_session_is_bounded() -> None:
    session = Session(fake_engines(["x"], ["y"]), SessionSettings())
    conn = connection(session)
    for _ in range(20):
        send(conn, _text_item("w" * 30_000))
    summary = session.transcript_summary()
    assert len(summary) < 800
    assert summary.startswith("20 items, 600000 bytes")


# ---------------------------------------------------------------- any frame at all


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_types = st.sampled_from(
    [
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.delete",
        "conversation.item.truncate",
        "response.create",
        "response.cancel",
        "x",
    ]
)
_events = st.builds(
    lambda kind, fields: json.dumps({**fields, "type": kind}),
    _types,
    st.dictionaries(
        st.sampled_from(
            ["session", "audio", "item", "item_id", "content_index", "audio_end_ms", "response",
             "previous_item_id", "event_id"]
        ),
        _json,
        max_size=4,
    ),
)  # fmt: skip
_frames = _events | st.text(max_size=200) | st.binary(max_size=200) | _json.map(json.dumps)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frames, min_size=1, max_size=8))
def test_no_frame_of_any_shape_ends_a_session_without_an_error_event(
    frames: list[str | bytes],
) -> None:
    asyncio.run(_receive_all(frames))


async def _receive_all(frames: list[str | bytes]) -> None:
    session = Session(fake_engines(["x"], ["y"]), SessionSettings(turn_detection=None))
    runner = asyncio.create_task(session.run())
    conn = connection(session)
    try:
        for frame in frames:
            out = conn.receive(frame)
            for event in out:
                validate_server_event(event)
                if event["type"] == "error":
                    error = event["error"]
                    assert error["code"] not in (None, "internal_error", error["type"]), error
                    assert error["message"]
            assert session.closed_reason is None
            await asyncio.sleep(0)  # let what the frame started run a step
    finally:
        session.close("test over")
        await runner
