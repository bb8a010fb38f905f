"""Speech over the agent: a backchannel resumes the reply, an interruption cancels it.

The decision rules on transcripts (``pipeline.backchannel``), then the session on virtual time with
fake engines (the recognizer says what the caller said), then the real server with Whisper and
espeak-ng speech."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.backchannel import BackchannelSettings, Overlap, classify, parse_words, words_of
from pipeline.clock import VirtualClock
from pipeline.errors import ConfigError
from pipeline.session import Tuning
from voice.config import load
from voice.server import VoiceServer

from .conftest import espeak
from .fakes import ScriptedAsr, fake_engines, silence, tone
from .harness import Harness
from .realtime_client import Caller

TURN_TIMEOUT = 90.0

LONG_REPLY = " ".join(f"word{i}" for i in range(20)) + "."  # 20 words, 4 s of speech
BC = BackchannelSettings()


@pytest.mark.parametrize(
    "text",
    ["Mm-hmm.", "Yeah.", "Right.", "Okay.", "Uh-huh.", "", "[laughter]", "(coughs)", "Ha ha ha!",
     "Yeah, right.", "I see.", "Oh, okay.", "Here."],
)  # fmt: skip
def test_backchannels(text: str) -> None:
    assert classify(text, 600, BC) is Overlap.BACKCHANNEL


@pytest.mark.parametrize(
    "text",
    ["Stop.", "Wait.", "No, I meant the other one.", "Wait, stop!", "Hold on.", "Sorry?",
     "What about Paris?", "Okay, but", "That will turn out fine", "Oh, it on."],
)  # fmt: skip
def test_interruptions(text: str) -> None:
    assert classify(text, 600, BC) is Overlap.INTERRUPTION


def test_long_speech_interrupts_whatever_its_words() -> None:
    assert classify("yeah", BC.max_ms + 1, BC) is Overlap.INTERRUPTION
    assert classify("yeah", BC.max_ms, BC) is Overlap.BACKCHANNEL


def test_every_rule_is_a_setting() -> None:
    strict = BackchannelSettings(unknown_max_words=0, words=parse_words("yeah, mm-hmm"))
    assert classify("Here.", 300, strict) is Overlap.INTERRUPTION
    assert classify("Mm-hmm, yeah.", 300, strict) is Overlap.BACKCHANNEL
    assert classify("Okay.", 300, strict) is Overlap.INTERRUPTION
    assert classify("wait", 300, BackchannelSettings(stop_words=frozenset())) is (
        Overlap.BACKCHANNEL
    )
    assert words_of("Mm-hmm [laughs] OK!") == ["mm", "hmm", "ok"]
    with pytest.raises(ValueError, match="max_ms"):
        BackchannelSettings(max_ms=0).validate()


async def _story(h: Harness) -> float:
    """Ask for the long reply and let a second of it play; returns when the caller cuts in."""
    await h.feed(tone(0.8))
    await h.feed_until(silence(0.02), m.ReplyAudio)
    await h.feed(silence(1.0))
    return h.clock.now()


async def test_a_backchannel_holds_the_agent_then_it_finishes_its_reply() -> None:
    engines = fake_engines(["tell me a story", "Mm-hmm."], [LONG_REPLY, "Unexpected."])
    async with Harness(engines) as h:
        onset = await _story(h)
        await h.feed(tone(0.5))  # longer than interrupt_min_speech_ms: words decide
        await h.feed(silence(0.6))  # (it resumes after resume_silence_ms of quiet)
        frames = [t for t, _ in h.timed(m.ReplyAudio)]
        held = [(a, b) for a, b in itertools.pairwise(frames) if a >= onset - 0.1]
        gap_start, gap_end = max(held, key=lambda p: p[1] - p[0])
        assert gap_start <= onset + 0.032 + 0.020  # held at the first speech window
        assert gap_end - gap_start > 0.5  # … while the caller spoke and the words were heard
        await h.feed_until(silence(0.02), m.ReplyDone)
        (done,) = h.of(m.ReplyDone)
        assert done.status == "completed" and done.item.text == LONG_REPLY
        assert sum(len(e.audio) for e in h.of(m.ReplyAudio)) == 20 * 200 * 24  # nothing lost
        await h.feed(silence(1.0))
        assert len(h.of(m.ReplyStarted)) == 1  # the backchannel is not answered …
        roles = [(i.role, i.text) for i in h.session.conversation.items]
        assert roles == [("user", "tell me a story"), ("assistant", LONG_REPLY)]  # … nor kept
        assert len(h.of(m.SpeechStarted)) == len(h.of(m.SpeechStopped)) == 2
        assert len(h.of(m.InputCommitted)) == 1
        # the client was told: held, then let go on (a WebRTC page mutes its track between)
        assert [(e.response_id, e.held) for e in h.of(m.ReplyHeld)] == [
            (done.response_id, True),
            (done.response_id, False),
        ]


async def test_a_real_interruption_stops_the_agent_at_once_and_is_answered() -> None:
    engines = fake_engines(["tell me a story", "Wait, stop."], [LONG_REPLY, "Sure."])
    async with Harness(engines) as h:
        onset = await _story(h)
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.ReplyDone)
        first = h.of(m.ReplyDone)[0]
        assert (first.status, first.reason) == ("cancelled", "turn_detected")
        # held at the first speech window, never let go on: the reply ended instead
        assert [(e.response_id, e.held) for e in h.of(m.ReplyHeld)] == [(first.response_id, True)]
        last = max(t for t, e in h.timed(m.ReplyAudio) if e.response_id == first.response_id)
        assert last <= onset + 0.032 + 0.020  # silent from the first speech window on
        heard = first.item.text.split()
        assert 0 < len(heard) < 20 and heard == LONG_REPLY.split()[: len(heard)]
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.1))
        assert h.of(m.ReplyDone)[1].item.text == "Sure."
        history = [(msg.role, msg.content) for msg in engines.llm.seen[-1][1:]]
        assert history == [
            ("user", "tell me a story"),
            ("assistant", " ".join(heard)),
            ("user", "Wait, stop."),
        ]


async def test_a_backchannel_word_then_more_words_stays_held_and_interrupts() -> None:
    """ "Thanks, … that is enough": the first pause's words are a backchannel, but the caller
    speaks again before ``resume_silence_ms``: the agent is not resumed in between, and all the
    words decide (an interruption)."""
    said = ["tell me a story", "Thanks.", "Thanks, that is enough."]
    engines = fake_engines(said, [LONG_REPLY, "Sure."])
    async with Harness(engines) as h:
        onset = await _story(h)
        await h.feed(tone(0.3))  # "Thanks,"
        await h.feed(silence(0.25))  # a pause: its words are a backchannel, and it is short
        assert len(engines.asr.calls) == 2 and not h.of(m.ReplyDone)
        await h.feed(tone(0.5))  # "that is enough"
        await h.feed_until(silence(0.02), m.ReplyDone)
        first = h.of(m.ReplyDone)[0]
        assert (first.status, first.reason) == ("cancelled", "turn_detected")
        frames = [t for t, e in h.timed(m.ReplyAudio) if e.response_id == first.response_id]
        assert max(frames) <= onset + 0.032 + 0.020  # never resumed after the first window
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.1))
        assert [(i.role, i.text) for i in h.session.conversation.items][-2:] == [
            ("user", "Thanks, that is enough."),
            ("assistant", "Sure."),
        ]


async def test_a_backchannel_resumes_only_after_resume_silence_ms() -> None:
    engines = fake_engines(["tell me a story", "Yeah."], [LONG_REPLY])
    tuning = Tuning(backchannel=BackchannelSettings(resume_silence_ms=700))
    async with Harness(engines, tuning=tuning) as h:
        onset = await _story(h)
        await h.feed(tone(0.3))
        speech_end, before = h.clock.now(), len(h.of(m.ReplyAudio))
        while len(h.of(m.ReplyAudio)) == before:
            assert h.clock.now() - speech_end < 5, "the reply never resumed"
            await h.feed(silence(0.02))
        resumed = h.clock.now()
        assert 0.7 <= resumed - speech_end <= 0.7 + 0.1  # quiet for 700 ms, then it goes on
        assert resumed - onset > 0.9
        await h.feed_until(silence(0.02), m.ReplyDone)
        (done,) = h.of(m.ReplyDone)
        assert done.status == "completed" and done.item.text == LONG_REPLY


async def test_speech_too_long_for_a_backchannel_interrupts_before_its_words() -> None:
    engines = fake_engines(["tell me a story", "yeah"], [LONG_REPLY, "Sure."])
    tuning = Tuning(backchannel=BackchannelSettings(max_ms=600))
    async with Harness(engines, tuning=tuning) as h:
        onset = await _story(h)
        await h.feed(tone(1.0))  # no pause: the words are not known yet
        (decided, done), *_ = h.timed(m.ReplyDone)
        assert done.status == "cancelled"
        assert abs(decided - onset - 0.6) <= 0.032 + 0.020
        assert len(engines.asr.calls) == 1  # only the first turn was transcribed so far


async def test_a_cough_the_recognizer_hears_nothing_in_is_a_backchannel() -> None:
    engines = fake_engines(["tell me a story", ""], [LONG_REPLY])
    async with Harness(engines) as h:
        await _story(h)
        await h.feed(tone(0.3))  # longer than interrupt_min_speech_ms
        await h.feed_until(silence(0.02), m.ReplyDone)
        (done,) = h.of(m.ReplyDone)
        assert done.status == "completed" and done.item.text == LONG_REPLY


async def test_with_backchannels_off_any_speech_interrupts() -> None:
    engines = fake_engines(["tell me a story", "Mm-hmm."], [LONG_REPLY, "Yes?"])
    tuning = Tuning(backchannel=BackchannelSettings(enabled=False))
    async with Harness(engines, tuning=tuning) as h:
        onset = await _story(h)
        await h.feed(tone(0.5))
        (decided, done), *_ = h.timed(m.ReplyDone)
        assert done.status == "cancelled"
        assert decided - onset <= 0.192 + 0.032 + 0.020  # at interrupt_min_speech_ms


def test_the_backchannel_keys_reach_the_listener_and_bad_ones_are_refused() -> None:
    config = load(
        env={},
        overrides={
            "vad.backchannel_max_ms": "800",
            "vad.backchannel_words": "yeah, mm-hmm",
            "vad.backchannel_unknown_max_words": "0",
        },
    )
    settings = config.vad.backchannel_settings()
    assert settings.max_ms == 800 and settings.words == {"yeah", "mm", "hmm"}
    assert classify("Okay.", 300, settings) is Overlap.INTERRUPTION
    config = load(env={}, overrides={"vad.backchannel_max_ms": "0"})
    with pytest.raises(ConfigError, match="backchannel_max_ms"):
        config.vad.backchannel_settings()


@pytest.mark.e2e
@pytest.mark.models
async def test_over_the_websocket_okay_lets_the_agent_finish_and_stop_does_not(
    server: VoiceServer,
) -> None:
    """Real Whisper hears espeak-ng's "Okay." over the agent: the reply goes on to its end; then
    "Wait, stop." over the next reply cancels it."""
    story = "Please tell me a story about a brave little dragon."
    async with Caller(server.port) as caller:  # type: ignore[arg-type]
        await caller.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "You are a storyteller. Tell stories of four sentences.",
                },
            }
        )
        for number, (overlap, interrupts) in enumerate(
            [("Okay.", False), ("Wait, stop.", True)], start=1
        ):
            caller.say(espeak(story, rate=24_000))
            await caller.wait_for(
                lambda n=number: len(caller.of("response.created")) >= n, TURN_TIMEOUT, "a reply"
            )
            reply_id = caller.of("response.created")[-1]["response"]["id"]
            await caller.wait_for(
                lambda r=reply_id: len(caller.audio_of(r)) >= 24_000, TURN_TIMEOUT, "1 s of it"
            )
            caller.say(espeak(overlap, rate=24_000, voice="en-us+f3"))
            await caller.wait_for(
                lambda r=reply_id: _done(caller, r), TURN_TIMEOUT * 2, "the reply to end"
            )
            done = _done(caller, reply_id)
            assert done is not None
            # (a reply that reached its token limit is "incomplete", not interrupted)
            assert (done["status"] == "cancelled") is interrupts, (overlap, done)
            # the backchannel was not made a turn (its reply went on for seconds after it);
            # the interruption is one
            turns = number + interrupts
            if interrupts:
                await caller.wait_for(
                    lambda t=turns: len(caller.of("input_audio_buffer.committed")) >= t,
                    TURN_TIMEOUT,
                    "the interruption's turn",
                )
            assert len(caller.of("input_audio_buffer.committed")) == turns
        second = _done(caller, reply_id)
        assert second is not None and second["status_details"]["reason"] == "turn_detected"


def _done(caller: Caller, response_id: str) -> dict[str, Any] | None:
    for event in caller.of("response.done"):
        if event["response"]["id"] == response_id:
            response: dict[str, Any] = event["response"]
            return response
    return None


class SlowAsr(ScriptedAsr):
    """Its second and later transcriptions take ``delay`` seconds of virtual time."""

    def __init__(self, texts: list[str], delay: float) -> None:
        super().__init__(texts)
        self.delay = delay
        self.clock: VirtualClock | None = None

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        text = await super().transcribe(audio, owner=owner)
        if len(self.calls) > 1 and self.clock is not None:
            await self.clock.sleep_until(self.clock.now() + self.delay)
        return text


async def test_the_pause_while_its_words_are_transcribed_does_not_count_as_speech() -> None:
    engines = fake_engines(["unused"], [LONG_REPLY])
    engines.asr = asr = SlowAsr(["tell me a story", "Okay."], delay=0.8)
    tuning = Tuning(backchannel=BackchannelSettings(max_ms=600))
    async with Harness(engines, tuning=tuning) as h:
        asr.clock = h.clock
        await _story(h)
        await h.feed(tone(0.4))
        await h.feed_until(silence(0.02), m.ReplyDone)
        (done,) = h.of(m.ReplyDone)
        assert done.status == "completed" and done.item.text == LONG_REPLY
