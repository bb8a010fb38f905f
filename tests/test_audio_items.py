"""Client-created audio items (``conversation.item.create`` with ``input_audio``): bounded like
one spoken turn, transcribed under a timeout that says what happened and scales with length."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.context import Item
from pipeline.errors import LimitExceeded
from pipeline.session import Session, SessionLimits

from .fakes import ScriptedAsr, fake_engines, tone

MULAW_RATE = 8_000  # the rate of the report's g711_ulaw items


async def next_events(session: Session, count: int) -> list[m.SessionEvent]:
    async with asyncio.timeout(10):
        return [await session.next_event() for _ in range(count)]


async def test_an_item_longer_than_one_turn_is_refused_and_nothing_is_added() -> None:
    engines = fake_engines(["hello there"], ["Hi."])
    session = Session(engines, limits=SessionLimits(max_input_buffer_s=60.0), clock=VirtualClock())
    before = session.conversation.transcript()
    with pytest.raises(LimitExceeded) as refused:
        session.add_audio_item(Item("item_long", "user"), tone(61.0, MULAW_RATE), MULAW_RATE, None)
    assert refused.value.code == "input_audio_too_long"
    assert refused.value.param == "item.content"
    assert "61.0 s" in str(refused.value) and "limits.max_input_buffer_s" in str(refused.value)
    assert session.conversation.transcript() == before
    assert session.conversation.get("item_long") is None

    session.add_audio_item(Item("item_ok", "user"), tone(60.0, MULAW_RATE), MULAW_RATE, None)
    added, transcript = await next_events(session, 2)
    assert isinstance(added, m.ItemAdded) and added.item.id == "item_ok"
    assert isinstance(transcript, m.UserTranscript) and transcript.transcript == "hello there"
    asr = engines.asr
    assert isinstance(asr, ScriptedAsr)
    assert asr.owners == [session.id]  # the recognizer knows whose audio it is
    session.close("test over")


class HangingAsr:
    """Never answers (a recognizer stuck behind other work)."""

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        await asyncio.Event().wait()
        return ""


async def test_a_transcription_timeout_says_so_and_scales_with_the_length() -> None:
    """On virtual time: the timeout is the session clock's, so a test waits for nothing."""
    engines = fake_engines(["unused"], ["Hi."])
    engines.asr = HangingAsr()
    clock = VirtualClock()
    session = Session(engines, limits=SessionLimits(asr_timeout=30.0), clock=clock)
    session.add_audio_item(Item("item_a", "user"), tone(45.0), 16_000, None)
    (added,) = await next_events(session, 1)
    assert isinstance(added, m.ItemAdded)
    await clock.advance(59.0)  # 45 s is two 30 s spans: twice the timeout, not yet over
    assert session._events.empty()
    await clock.advance(1.5)
    error, transcript = await next_events(session, 2)
    assert isinstance(error, m.TranscriptionFailed) and error.code == "asr_failed"
    assert error.item_id == "item_a"
    # (the old message was "transcription failed: ")
    assert error.message == "transcription failed: transcription timed out after 60 s"
    assert isinstance(transcript, m.UserTranscript) and transcript.transcript == ""
    session.close("test over")
