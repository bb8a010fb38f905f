"""Input transcription events, ``transcription`` settings, ``semantic_vad`` and
``idle_timeout_ms``: on virtual time with fake engines, every rendered event validated against
the openai SDK's models."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.errors import EngineError
from pipeline.listening import IDLE_INSTRUCTIONS, interim_delta
from pipeline.session import Session, SessionSettings, Tuning
from pipeline.turns import TurnSettings
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import INTERIM_EVENT, RealtimeConnection
from transports.realtime.input_config import recognizer_languages

from .fakes import ScriptedAsr, ScriptedJudge, ScriptedLlm, fake_engines, silence, tone
from .harness import Harness
from .realtime_schema import validate_server_event

Event = dict[str, Any]
DELTA = "conversation.item.input_audio_transcription.delta"
FAILED = "conversation.item.input_audio_transcription.failed"
COMPLETED = "conversation.item.input_audio_transcription.completed"
TRANSCRIPTION = "session.audio.input.transcription"


def attach(h: Harness, *, extensions: bool = False, **config: Any) -> RealtimeConnection:
    return RealtimeConnection(
        h.session,
        RealtimeConfig("voice-local", h.session.settings, **config),
        max_event_bytes=1 << 20,
        extensions=extensions,
    )


def rendered(h: Harness, conn: RealtimeConnection) -> list[Event]:
    events = [e for _, ev in h.events for e in conn.render(ev)]
    for event in events:
        validate_server_event(event)
    return events


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e["type"] == kind]


def connection(**config: Any) -> RealtimeConnection:
    session = Session(fake_engines(["hello"], ["Hi there."]), SessionSettings())
    return RealtimeConnection(
        session,
        RealtimeConfig("voice-local", session.settings, **config),
        max_event_bytes=65536,
    )


def update(conn: RealtimeConnection, session: dict[str, Any]) -> Event:
    (out,) = conn.receive(json.dumps({"type": "session.update", "session": session}))
    validate_server_event(out)
    return out


def refused(conn: RealtimeConnection, session: dict[str, Any]) -> dict[str, Any]:
    before = conn.config.describe()
    out = update(conn, session)
    assert out["type"] == "error", out
    assert conn.config.describe() == before  # all or nothing
    return dict(out["error"])


class BrokenAsr:
    """Fails every transcription, after ``delay`` s of virtual time."""

    def __init__(self, clock: VirtualClock | None = None, delay: float = 0.0) -> None:
        self.clock, self.delay = clock, delay

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        if self.clock is not None:
            await self.clock.sleep_until(self.clock.now() + self.delay)
        raise EngineError("model crashed", engine="asr")


# ---------------------------------------------------------------- interim → delta


@pytest.mark.parametrize(
    ("sent", "text", "delta", "now_sent"),
    [
        ([], "What is", "What is", ["what", "is"]),
        (["what", "is"], "What is the weather", " the weather", ["what", "is", "the", "weather"]),
        (["what", "time"], "What time is it?", " is it", ["what", "time", "is", "it"]),
        ([], "What time.", "What time", ["what", "time"]),  # the sentence may go on
        (["what", "time"], "What's the time", "", ["what", "time"]),  # revised: nothing
        (["what", "time"], "What time.", "", ["what", "time"]),  # nothing new
        ([], " ... ", "", []),
    ],
)
def test_an_interim_result_gives_the_words_that_extend_the_ones_sent(
    sent: list[str], text: str, delta: str, now_sent: list[str]
) -> None:
    assert interim_delta(sent, text) == (delta, now_sent)


@pytest.mark.parametrize("extensions", [False, True])
async def test_interim_results_are_sent_as_transcription_deltas(extensions: bool) -> None:
    engines = fake_engines(
        ["What is", "What is the weather", "What is the weather like?"], ["Sunny."]
    )
    engines.judge = ScriptedJudge({}, default=0.5)
    async with Harness(engines, tuning=Tuning(interim_asr_ms=500)) as h:
        conn = attach(h, extensions=extensions)
        await h.feed(tone(1.3))
        await h.feed_until(silence(0.02), m.ReplyDone)
        events = rendered(h, conn)
    deltas = of(events, DELTA)
    assert [e["delta"] for e in deltas] == ["What is", " the weather"]
    item_id = of(events, "input_audio_buffer.committed")[0]["item_id"]
    assert {e["item_id"] for e in deltas} == {item_id}
    assert all(e["content_index"] == 0 for e in deltas)
    types = [e["type"] for e in events]
    assert types.index(DELTA) < types.index("input_audio_buffer.speech_stopped")
    assert types.index(COMPLETED) > max(i for i, t in enumerate(types) if t == DELTA)
    assert of(events, COMPLETED)[0]["transcript"] == "What is the weather like?"
    interim = of(events, INTERIM_EVENT)  # the extension event, for those who opted in
    assert [e["transcript"] for e in interim] == (
        ["What is", "What is the weather"] if extensions else []
    )


async def test_with_transcription_off_no_transcription_event_is_sent() -> None:
    engines = fake_engines(["What is", "What is the weather like?"], ["Sunny."])
    async with Harness(engines, tuning=Tuning(interim_asr_ms=500)) as h:
        conn = attach(h)
        update(conn, {"audio": {"input": {"transcription": None}}})
        await h.feed(tone(1.0))
        await h.feed_until(silence(0.02), m.ReplyDone)
        events = rendered(h, conn)
    assert not [e for e in events if "input_audio_transcription" in e["type"]]
    # the server still transcribed, to answer
    assert h.session.conversation.items[0].text == "What is the weather like?"
    assert of(events, "response.done")[0]["response"]["status"] == "completed"


# ---------------------------------------------------------------- failures


async def test_a_failed_transcription_is_a_failed_event_for_its_item() -> None:
    engines = fake_engines(["unused"], ["Hi."])
    engines.asr = BrokenAsr()
    async with Harness(engines) as h:
        conn = attach(h)
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.UserTranscript)
        await h.feed(silence(0.1))
        events = rendered(h, conn)
    (failed,) = of(events, FAILED)
    assert failed["item_id"] == of(events, "input_audio_buffer.committed")[0]["item_id"]
    assert failed["content_index"] == 0
    assert failed["error"]["code"] == "asr_failed"
    assert "model crashed" in failed["error"]["message"]
    assert not of(events, COMPLETED)  # a transcription ends one way, not both
    assert not of(events, "error") and not of(events, "response.created")


async def test_an_early_transcription_failing_after_the_turn_ended_is_reported_once() -> None:
    engines = fake_engines(["unused"], ["Hi."])
    fixed = Tuning(eot_adaptive=False, speculative_reply=False)
    async with Harness(engines, tuning=fixed) as h:
        engines.asr = h.session.engines.asr = BrokenAsr(h.clock, delay=1.0)
        await h.feed(tone(0.5))
        await h.feed(silence(0.7))  # the turn ends at 500 ms; the early try is still running
        assert h.of(m.InputCommitted) and not h.of(m.TranscriptionFailed)
        await h.feed_until(silence(0.02), m.UserTranscript)
        (failed,) = h.of(m.TranscriptionFailed)
        assert failed.item_id == h.of(m.InputCommitted)[0].item_id
        assert not h.of(m.SessionError)


async def test_with_transcription_off_a_failure_is_an_error_event() -> None:
    engines = fake_engines(["unused"], ["Hi."])
    engines.asr = BrokenAsr()
    async with Harness(engines) as h:
        conn = attach(h)
        update(conn, {"audio": {"input": {"transcription": None}}})
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.UserTranscript)
        events = rendered(h, conn)
    assert not of(events, FAILED)
    assert [e["error"]["code"] for e in of(events, "error")] == ["asr_failed"]


# ---------------------------------------------------------------- transcription settings


@pytest.mark.parametrize(
    "model",
    [
        "whisper-tiny.en",
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
    ],
)
def test_the_servers_and_openais_transcription_models_are_accepted(model: str) -> None:
    conn = connection(transcription_model="whisper-tiny.en")
    (created,) = conn.hello()
    assert created["session"]["audio"]["input"]["transcription"] == {"model": "whisper-tiny.en"}
    out = update(conn, {"audio": {"input": {"transcription": {"model": model, "language": "en"}}}})
    shown = out["session"]["audio"]["input"]["transcription"]
    assert shown == {"model": model, "language": "en"}  # as the client chose it


@pytest.mark.parametrize(
    ("transcription", "code", "field"),
    [
        ({"model": "nova-3"}, "invalid_value", "model"),
        ({"model": "gpt-4o-transcribe-diarize"}, "invalid_value", "model"),
        ({"language": "fr"}, "invalid_value", "language"),
        ({"prompt": "expect words about weather"}, "unsupported_parameter", "prompt"),
        ({"keywords": ["Nordic"]}, "unsupported_parameter", "keywords"),
        ({"delay": "low"}, "unsupported_parameter", "delay"),
        ({"temperature": 0}, "unknown_parameter", "temperature"),
        ({"model": 1}, "invalid_type", "model"),
    ],
)
def test_what_the_recognizer_cannot_do_is_refused_by_name(
    transcription: dict[str, Any], code: str, field: str
) -> None:
    conn = connection(transcription_model="whisper-tiny.en")
    error = refused(conn, {"audio": {"input": {"transcription": transcription}}})
    assert error["code"] == code
    assert error["param"] == f"{TRANSCRIPTION}.{field}"
    if field == "language":
        assert "whisper-tiny.en transcribes only 'en'" in error["message"]


def test_the_beta_name_and_an_empty_prompt_are_accepted_and_null_turns_it_off() -> None:
    conn = connection()
    out = update(conn, {"input_audio_transcription": {"model": "whisper-1", "prompt": ""}})
    assert out["session"]["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    error = refused(conn, {"input_audio_transcription": {"language": "de"}})
    assert error["param"] == "session.input_audio_transcription.language"
    out = update(conn, {"audio": {"input": {"transcription": None}}})
    assert out["session"]["audio"]["input"]["transcription"] is None
    assert conn.config.transcription is None
    out = update(conn, {"audio": {"input": {"transcription": {}}}})  # on again, the server's
    assert out["session"]["audio"]["input"]["transcription"] == {"model": "whisper"}


def test_a_recognizer_that_detects_the_language_takes_none_per_session() -> None:
    assert recognizer_languages("tiny.en", "") == ("en",)
    assert recognizer_languages("base", "de") == ("de",)
    assert recognizer_languages("base", "") == ()
    conn = connection(transcription_model="whisper-base", transcription_languages=())
    error = refused(conn, {"audio": {"input": {"transcription": {"language": "fr"}}}})
    assert "detects the language itself" in error["message"]


# ---------------------------------------------------------------- semantic_vad


def test_semantic_vad_is_accepted_and_described_back() -> None:
    conn = connection()
    out = update(conn, {"turn_detection": {"type": "semantic_vad"}})  # beta name
    assert out["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "auto"
    vad = {"type": "semantic_vad", "eagerness": "high", "create_response": False}
    out = update(conn, {"audio": {"input": {"turn_detection": vad}}})
    assert out["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": False,
        "interrupt_response": True,
    }
    td = conn.session.settings.turn_detection
    assert td is not None and td.eagerness == "high"
    out = update(conn, {"turn_detection": {"type": "semantic_vad"}})  # what is unsaid stays
    assert out["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "high"
    out = update(conn, {"turn_detection": {"type": "server_vad"}})
    shown = out["session"]["audio"]["input"]["turn_detection"]
    assert shown["type"] == "server_vad" and "eagerness" not in shown


@pytest.mark.parametrize(
    ("vad", "param", "says"),
    [
        ({"type": "semantic_vad", "eagerness": "eager"}, "eagerness", "one of low"),
        ({"type": "semantic_vad", "threshold": 0.5}, "threshold", "of server_vad"),
        ({"type": "semantic_vad", "idle_timeout_ms": 6000}, "idle_timeout_ms", "of server_vad"),
        ({"type": "server_vad", "eagerness": "low"}, "eagerness", "of semantic_vad"),
        ({"type": "magic_vad"}, "type", "semantic_vad"),
    ],
)
def test_turn_detection_fields_of_the_other_kind_are_refused_by_name(
    vad: dict[str, Any], param: str, says: str
) -> None:
    error = refused(connection(), {"audio": {"input": {"turn_detection": vad}}})
    assert error["param"] == f"session.audio.input.turn_detection.{param}"
    assert says in error["message"]


async def ended_after_ms(td: TurnSettings, tuning: Tuning) -> tuple[float, ScriptedJudge]:
    """How long after the caller's last word the turn ended (a plain statement)."""
    engines = fake_engines(["I want to book a table."], ["Sure."])
    engines.judge = judge = ScriptedJudge({}, default=0.1)  # unsure: the statement's silence
    async with Harness(engines, SessionSettings(turn_detection=td), tuning=tuning) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.SpeechStopped)
        return (h.timed(m.SpeechStopped)[0][0] - 0.6) * 1000, judge


@pytest.mark.parametrize(("eagerness", "ms"), [("high", 360), ("auto", 600), ("low", 1200)])
async def test_eagerness_scales_the_silence_that_ends_a_turn(eagerness: str, ms: int) -> None:
    # the server's latency techniques all off: semantic_vad still asks the words and the judge
    off = Tuning(early_asr=False, speculative_reply=False, eot_adaptive=False)
    waited, judge = await ended_after_ms(TurnSettings(eagerness=eagerness), off)
    assert waited == pytest.approx(ms, abs=40 + 20)  # a VAD window and a chunk
    assert judge.seen[0][-1].content == "I want to book a table."


async def test_server_vad_keeps_its_fixed_silence() -> None:
    off = Tuning(early_asr=False, speculative_reply=False, eot_adaptive=False)
    waited, judge = await ended_after_ms(TurnSettings(silence_duration_ms=500), off)
    assert waited == pytest.approx(500, abs=40 + 20)
    assert not judge.seen


# ---------------------------------------------------------------- idle_timeout_ms


def idle_settings(ms: int = 5000) -> SessionSettings:
    return SessionSettings(turn_detection=TurnSettings(idle_timeout_ms=ms))


async def test_idle_timeout_fires_after_the_set_silence_and_not_before() -> None:
    engines = fake_engines(["unused"], ["Are you still there?"])
    asr, llm = engines.asr, engines.llm
    assert isinstance(asr, ScriptedAsr) and isinstance(llm, ScriptedLlm)
    async with Harness(engines, idle_settings()) as h:
        conn = attach(h)
        (updated,) = conn.receive(json.dumps({"type": "session.update", "session": {}}))
        assert updated["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 5000
        await h.feed(silence(4.9))
        assert not h.of(m.IdleTimeout)
        await h.feed_until(silence(0.02), m.ReplyDone)
        ((fired, idle),) = h.timed(m.IdleTimeout)
        assert 5.0 <= fired <= 5.0 + 0.032 + 0.02
        assert idle.audio_start_ms == 0 and 5000 <= idle.audio_end_ms <= 5032
        # the silence is committed as a user item (not transcribed) and a reply follows
        assert h.types()[:5] == [
            "IdleTimeout", "InputCommitted", "ItemAdded", "ReplyStarted", "UserTranscript"
        ]  # fmt: skip
        assert h.of(m.InputCommitted)[0].item_id == idle.item_id
        assert h.of(m.UserTranscript)[0].transcript == ""
        assert asr.calls == []
        assert h.of(m.ReplyDone)[0].status == "completed"
        prompt = llm.seen[0]
        assert prompt[0].role == "system" and prompt[0].content.endswith(IDLE_INSTRUCTIONS)
        events = rendered(h, conn)
    (triggered,) = of(events, "input_audio_buffer.timeout_triggered")
    assert triggered["item_id"] == idle.item_id
    assert (triggered["audio_start_ms"], triggered["audio_end_ms"]) == (0, idle.audio_end_ms)
    types = [e["type"] for e in events]
    assert types.index("input_audio_buffer.timeout_triggered") < types.index(
        "input_audio_buffer.committed"
    )


async def test_the_idle_timer_counts_from_the_end_of_the_reply_not_while_anyone_speaks() -> None:
    reply = " ".join(f"word{i}" for i in range(20)) + "."  # 4 s of speech
    engines = fake_engines(["tell me a story"], [reply, "Still there?"])
    asr = engines.asr
    assert isinstance(asr, ScriptedAsr)
    async with Harness(engines, idle_settings()) as h:
        await h.feed(silence(3.0))
        await h.feed(tone(6.0))  # a long turn: longer than the timeout, and no timeout
        await h.feed_until(silence(0.02), m.ReplyDone)  # the 4 s reply: no timeout either
        assert not h.of(m.IdleTimeout)
        (done_at, _), *_ = h.timed(m.ReplyDone)
        await h.feed(silence(3.0))
        asr.texts = [""]  # a sound from the caller: a turn, with no words to answer
        await h.feed(tone(0.3))  # sets the timer back: it counts from the end of that turn
        await h.feed_until(silence(0.02), m.IdleTimeout)
        ((fired, idle),) = h.timed(m.IdleTimeout)
        assert fired >= done_at + 3.0 + 0.3 + 5.0
        spoke_until_ms = round((done_at + 3.3) * 1000)
        assert spoke_until_ms <= idle.audio_start_ms <= spoke_until_ms + 1100 + 40  # turn end
        assert len(h.of(m.ReplyStarted)) == 2  # the story, then the idle reply


async def test_without_idle_timeout_silence_is_only_silence() -> None:
    engines = fake_engines(["unused"], ["Hi."])
    async with Harness(engines) as h:
        await h.feed(silence(40.0))
        assert not h.of(m.IdleTimeout) and not h.of(m.InputCommitted)


async def test_setting_an_idle_timeout_mid_turn_keeps_the_turn_and_counts_from_then() -> None:
    engines = fake_engines(["hello there"], ["Hi."])
    async with Harness(engines) as h:
        conn = attach(h)
        await h.feed(silence(20.0))
        await h.feed(tone(0.5))
        update(conn, {"audio": {"input": {"turn_detection": {"idle_timeout_ms": 5000}}}})
        await h.feed(tone(0.3))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(h.of(m.SpeechStarted)) == 1  # the turn went on
        assert h.of(m.UserTranscript)[0].transcript == "hello there"
        assert not h.of(m.IdleTimeout)  # 20 s of silence before it do not count
