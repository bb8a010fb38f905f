"""Keypad presses (DTMF) in the session core, on virtual time with fake engines: the client is
told of each press at once, presses are gathered into one user item that is answered, and the
Realtime event matches OpenAI's published schema."""

from __future__ import annotations

import json

import pytest

from pipeline import messages as m
from pipeline.dtmf import KeypadSettings
from pipeline.errors import ProtocolError
from pipeline.session import SessionLimits
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection
from transports.twilio import TwilioStream

from .fakes import fake_engines, silence, tone
from .harness import Harness
from .realtime_schema import validate_server_event

LONG_REPLY = " ".join(f"word{i}" for i in range(20)) + "."


async def test_presses_are_reported_at_once_and_gathered_into_one_answered_item() -> None:
    engines = fake_engines(["unused"], ["Your account is found."])
    async with Harness(engines) as h:
        h.session.keypad.wall = lambda: 1_764_000_000.0  # type: ignore[method-assign]
        for digit in "12":
            h.session.dtmf(digit)
            await h.clock.advance(0.5)
        assert [e.digit for e in h.of(m.DtmfReceived)] == ["1", "2"]
        assert not h.of(m.ItemAdded)  # still gathering: 1.5 s after the last press
        await h.clock.advance(1.0)
        (added,) = h.of(m.ItemAdded)
        assert (added.item.role, added.item.text) == ("user", "[keypad] 1 2")
        await h.feed_until(silence(0.02), m.ReplyDone)
        done = h.of(m.ReplyDone)[0]
        assert done.status == "completed" and done.item is not None
        assert done.item.text == "Your account is found."
        prompt = engines.llm.seen[0]  # type: ignore[attr-defined]
        assert prompt[-1].role == "user" and prompt[-1].content == "[keypad] 1 2"


async def test_a_terminator_writes_the_item_at_once() -> None:
    async with Harness(fake_engines(["unused"], ["Thanks."])) as h:
        for digit in "42#":
            h.session.dtmf(digit)
        await h.clock.advance(0)
        (added,) = h.of(m.ItemAdded)
        assert added.item.text == "[keypad] 4 2 #"
        await h.clock.advance(5.0)  # no second item from a stale timer
        assert len(h.of(m.ItemAdded)) == 1


async def test_max_digits_bounds_what_is_gathered() -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        h.session.keypad.settings = KeypadSettings(max_digits=3, respond=False)
        for digit in "1234567":
            h.session.dtmf(digit)
        await h.clock.advance(2.0)
        texts = [e.item.text for e in h.of(m.ItemAdded)]
        assert texts == ["[keypad] 1 2 3", "[keypad] 4 5 6", "[keypad] 7"]
        assert not h.of(m.ReplyStarted)


async def test_a_press_interrupts_the_reply_being_spoken() -> None:
    engines = fake_engines(["tell me a story"], [LONG_REPLY, "Menu two."])
    async with Harness(engines) as h:
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.ReplyAudio)
        h.session.dtmf("2")
        await h.clock.advance(0)
        (first, *_) = h.of(m.ReplyDone)
        assert first.status == "cancelled" and first.reason == "turn_detected"
        await h.feed_until(silence(0.02), m.ItemAdded)
        await h.clock.advance(1.6)
        await h.feed(silence(0.1))
        texts = [e.item.text for e in h.of(m.ItemAdded)]
        assert "[keypad] 2" in texts


async def test_reported_only_when_the_conversation_is_not_to_hear_them() -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        h.session.keypad.settings = KeypadSettings(to_conversation=False)
        h.session.dtmf("5")
        await h.clock.advance(3.0)
        assert [e.digit for e in h.of(m.DtmfReceived)] == ["5"]
        assert not h.of(m.ItemAdded) and not h.of(m.ReplyStarted)


@pytest.mark.parametrize("digit", ["x", "12", "", "E", "\x00", 5])
async def test_a_key_that_does_not_exist_is_refused_and_nothing_is_kept(digit: object) -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        with pytest.raises(ProtocolError) as caught:
            h.session.dtmf(digit)  # type: ignore[arg-type]
        assert caught.value.code == "invalid_dtmf"
        await h.clock.advance(3.0)
        assert not h.of(m.DtmfReceived) and not h.of(m.ItemAdded)
        assert h.session.keypad.pending == []


async def test_lowercase_letters_are_the_keys_a_to_d() -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        h.session.dtmf("a")
        await h.clock.advance(0)
        assert h.of(m.DtmfReceived)[0].digit == "A"


async def test_a_full_conversation_refuses_the_item_with_an_error_not_a_crash() -> None:
    limits = SessionLimits(max_conversation_bytes=8)
    async with Harness(fake_engines(["unused"], ["Ok."]), limits=limits) as h:
        h.session.dtmf("#")
        await h.clock.advance(0)
        (error,) = h.of(m.SessionError)
        assert error.code == "conversation_too_large"
        assert h.session.closed_reason is None
        h.session.dtmf("1")  # the session goes on
        await h.clock.advance(0)
        assert len(h.of(m.DtmfReceived)) == 2


async def test_a_closed_session_ignores_presses() -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        h.session.dtmf("1")
        h.session.close("caller hung up")
        h.session.dtmf("2")
        await h.clock.advance(3.0)
        assert [e.digit for e in h.of(m.DtmfReceived)] == ["1"]
        assert not h.of(m.ItemAdded)


def test_the_realtime_event_is_openais() -> None:
    engines = fake_engines(["unused"], ["Ok."])
    harness = Harness(engines)
    conn = RealtimeConnection(
        harness.session,
        RealtimeConfig(model="m", settings=harness.session.settings),
        max_event_bytes=1 << 16,
    )
    (event,) = conn.render(m.DtmfReceived("#", 1_764_000_000))
    assert event == {
        "type": "input_audio_buffer.dtmf_event_received",
        "event": "#",
        "received_at": 1_764_000_000,
    }
    validate_server_event(event)


def _frame(event: str, **fields: object) -> str:
    return json.dumps({"event": event, "streamSid": "MZk", **fields})


async def test_twilio_keys_reach_the_session_unless_the_call_is_held() -> None:
    async with Harness(fake_engines(["unused"], ["Ok."])) as h:
        stream = TwilioStream(h.session)
        start = {
            "streamSid": "MZk",
            "callSid": "CAk",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        stream.receive(_frame("start", start=start))
        stream.held = True  # waiting to be accepted: the key is dropped, not an error
        stream.receive(_frame("dtmf", dtmf={"digit": "1"}))
        stream.held = False
        stream.receive(_frame("dtmf", dtmf={"digit": "2"}))
        stream.receive(_frame("dtmf", dtmf={"digit": "E"}))  # no such key: skipped, counted
        h.session.keypad.press("3")  # (the session refuses a bad key itself, too)
        with pytest.raises(ProtocolError):
            h.session.dtmf("*1")
        await h.clock.advance(0)
        assert [e.digit for e in h.of(m.DtmfReceived)] == ["2", "3"]
        assert (stream.held_media, stream.malformed, list(stream.dtmf)) == (1, 1, ["2"])
