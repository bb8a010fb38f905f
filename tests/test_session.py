"""The session core on virtual time, with fake engines: turns, replies, barge-in, limits."""

from __future__ import annotations

import asyncio
import itertools
import math

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.backchannel import BackchannelSettings
from pipeline.errors import EngineError, LimitExceeded, ProtocolError
from pipeline.session import SessionLimits, SessionSettings, Tuning

from .fakes import ScriptedJudge, fake_engines, silence, tone
from .harness import Harness

LONG_REPLY = " ".join(f"word{i}" for i in range(20)) + "."  # 20 words, 4 s of speech


async def test_a_spoken_turn_is_answered() -> None:
    engines = fake_engines(["what time is it"], ["It is noon. Have a nice day."])
    async with Harness(engines) as h:
        await h.feed(silence(0.3))
        await h.feed(tone(1.0))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert h.types()[:8] == [
            "SpeechStarted", "SpeechStopped", "InputCommitted", "ItemAdded",
            "UserTranscript", "ReplyStarted", "ReplyText", "ReplyText",
        ]  # fmt: skip
        done = h.of(m.ReplyDone)[0]
        assert done.status == "completed"
        assert done.item is not None and done.item.text == "It is noon. Have a nice day."
        started = h.of(m.SpeechStarted)[0]
        assert started.audio_start_ms == 0  # 300 ms of silence before = the prefix padding
        assert 1300 <= h.of(m.SpeechStopped)[0].audio_end_ms <= 1300 + 32  # one VAD window
        audio = sum(len(e.audio) for e in h.of(m.ReplyAudio))
        assert audio == 7 * 200 * 24  # seven words of 200 ms at 24 kHz
        assert h.of(m.TurnMetrics)[0].marks["first_audio_sent"] is not None
        user, assistant = h.session.conversation.items
        assert (user.role, user.text) == ("user", "what time is it")
        assert (assistant.role, assistant.status) == ("assistant", "completed")


async def test_audio_is_paced_in_20ms_frames_in_real_time() -> None:
    engines = fake_engines(["hi"], ["one two three four five."])
    async with Harness(engines, lead_ms=0) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        frames = h.timed(m.ReplyAudio)
        assert {len(e.audio) for _, e in frames} == {480}
        start = frames[0][0]
        for i, (t, _) in enumerate(frames):
            assert t - start == pytest.approx(i * 0.020, abs=0.0201)  # never ahead of real time
        assert frames[-1][0] - start >= 0.98  # one second of speech took a second


async def test_barge_in_stops_audio_keeps_the_heard_prefix_and_the_next_turn_works() -> None:
    engines = fake_engines(["tell me a story", "stop please"], [LONG_REPLY, "Okay."])
    words_unheard = Tuning(backchannel=BackchannelSettings(enabled=False))
    async with Harness(engines, tuning=words_unheard) as h:
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.ReplyAudio)
        await h.feed(silence(1.0))  # one second of the reply is heard
        onset = h.clock.now()
        await h.feed(tone(0.4))  # the caller cuts in
        (decided, done), *_ = h.timed(m.ReplyDone)
        assert done.status == "cancelled" and done.reason == "turn_detected"
        # the audio is held at the first speech window (one VAD window and one chunk after the
        # onset) and the reply cancelled after 192 ms of speech
        last_audio = max(t for t, e in h.timed(m.ReplyAudio) if e.response_id == done.response_id)
        assert onset - 0.020 <= last_audio <= onset + 0.032 + 0.020
        assert abs(decided - onset - 0.192) <= 0.032 + 0.020
        heard = done.item.text.split()
        assert 0 < len(heard) < 20
        assert heard == LONG_REPLY.split()[: len(heard)]
        assert len(heard) == done.item.audio_ms // 200  # 200 ms per word
        assert done.item.status == "incomplete"

        await h.feed(tone(0.4))
        await h.feed_until(silence(0.02), m.ReplyDone)
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.1))
        second = h.of(m.ReplyDone)[1]
        assert second.status == "completed" and second.item.text == "Okay."
        history = [(msg.role, msg.content) for msg in engines.llm.seen[1][1:]]
        assert history == [
            ("user", "tell me a story"),
            ("assistant", " ".join(heard)),
            ("user", "stop please"),
        ]


async def test_a_reply_not_yet_audible_is_dropped_when_the_caller_goes_on() -> None:
    engines = fake_engines(["first part", "second part"], ["Answer."])
    fixed_silence = Tuning(speculative_reply=False, eot_adaptive=False)
    async with Harness(engines, tuning=fixed_silence) as h:
        engines.llm.delay(h.clock, 1.0)  # a slow LLM: the reply stays silent for a second
        await h.feed(tone(0.5))
        await h.feed(silence(0.6))  # the turn ends after 500 ms of silence …
        assert h.of(m.ReplyStarted)
        await h.feed(tone(0.2))  # … but the caller was only pausing
        done = h.of(m.ReplyDone)[0]
        assert (done.status, done.reason, done.output_started) == (
            "cancelled",
            "turn_detected",
            False,
        )
        assert not h.of(m.ReplyAudio)
        await h.feed_until(silence(0.02), m.ReplyAudio)
        last_prompt = [(msg.role, msg.content) for msg in engines.llm.seen[-1][1:]]
        assert last_prompt == [("user", "first part"), ("user", "second part")]


async def test_early_transcription_is_reused_when_the_caller_stays_silent() -> None:
    engines = fake_engines(["hello there"], ["Hi."])
    async with Harness(engines) as h:
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(engines.asr.calls) == 1


async def test_resumed_speech_discards_the_early_transcription() -> None:
    engines = fake_engines(["one whole sentence"], ["Hi."])
    async with Harness(engines) as h:
        await h.feed(tone(0.5))
        await h.feed(silence(0.3))  # tentative end: ASR starts early …
        await h.feed(tone(0.5))  # … but the caller goes on
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(engines.asr.calls) == 2
        assert engines.asr.calls[1] > engines.asr.calls[0]  # the whole turn, not its first half
        assert len(h.of(m.InputCommitted)) == 1


async def test_noise_without_words_gets_no_reply() -> None:
    engines = fake_engines([""], ["Should not be said."])
    async with Harness(engines) as h:
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.UserTranscript)
        await h.feed(silence(0.5))
        assert not h.of(m.ReplyStarted)


async def test_manual_turns_commit_and_respond_on_request() -> None:
    engines = fake_engines(["manual question"], ["Manual answer."])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        with pytest.raises(ProtocolError) as err:
            h.session.commit_audio()
        assert err.value.code == "input_audio_buffer_commit_empty"
        await h.feed(tone(0.5))
        await h.feed(silence(1.0))
        assert not h.of(m.SpeechStarted) and not h.of(m.InputCommitted)
        h.session.commit_audio()
        await h.feed_until(silence(0.02), m.UserTranscript)
        await h.feed(silence(0.5))
        assert not h.of(m.ReplyStarted)
        h.session.create_response()
        with pytest.raises(ProtocolError) as err:
            h.session.create_response()
        assert err.value.code == "conversation_already_has_active_response"
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert h.of(m.ReplyDone)[0].item.text == "Manual answer."


async def test_client_cancel_and_truncate() -> None:
    engines = fake_engines(["q"], [LONG_REPLY])
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        h.session.create_response()
        await h.feed_until(silence(0.02), m.ReplyAudio)
        await h.feed(silence(1.0))
        h.session.cancel_response()
        await h.feed(silence(0.02))
        done = h.of(m.ReplyDone)[0]
        assert (done.status, done.reason) == ("cancelled", "client_cancelled")
        with pytest.raises(ProtocolError):
            h.session.cancel_response()
        h.session.truncate_item(done.item.id, 0, 400)
        await h.clock.advance(0)
        assert h.of(m.ItemTruncated)[0].audio_end_ms == 400
        assert done.item.text == "word0 word1"
        with pytest.raises(ProtocolError):
            h.session.truncate_item(done.item.id, 0, 60_000)


async def test_audio_faster_than_real_time_is_refused_beyond_the_limit() -> None:
    engines = fake_engines(["x"], ["y."])
    limits = SessionLimits(max_pending_input_ms=1000)
    async with Harness(engines, limits=limits) as h:
        h.session.append_audio(silence(0.9), 16_000)  # at once, no time passes
        with pytest.raises(LimitExceeded) as err:
            h.session.append_audio(silence(0.2), 16_000)
        assert err.value.code == "input_audio_rate_exceeded"
        await h.clock.advance(0.02)  # the VAD has caught up, but the caller is still ahead
        with pytest.raises(LimitExceeded):
            h.session.append_audio(silence(0.2), 16_000)
        await h.clock.advance(0.15)  # real time catches up …
        h.session.append_audio(silence(0.2), 16_000)  # … and audio is accepted again


async def test_a_client_that_stops_reading_closes_its_session() -> None:
    engines = fake_engines(["q"], [LONG_REPLY])
    session_limits = SessionLimits(max_pending_events=50)
    h = Harness(engines, SessionSettings(turn_detection=None), limits=session_limits)
    h.session.create_response()  # nobody reads the events
    for _ in range(100):
        await h.clock.advance(0.02)
    assert h.session.closed_reason is not None
    assert "not reading" in h.session.closed_reason


async def test_a_speculative_reply_is_prepared_during_the_pause_and_heard_once_confirmed() -> None:
    engines = fake_engines(["Is it raining?"], ["No, it is sunny."])
    async with Harness(engines) as h:
        engines.llm.delay(h.clock, 0.05)
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        marks = h.of(m.TurnMetrics)[0].marks
        # transcript at 96 ms of silence, first token 50 ms later, before the turn ended
        assert marks["asr_done"] == pytest.approx(96, abs=40)
        assert marks["llm_first_token"] < marks["turn_end"]
        assert marks["turn_end"] == pytest.approx(250, abs=40)  # a question: a short silence
        first_audio = h.timed(m.ReplyAudio)[0][0]
        stopped = h.timed(m.SpeechStopped)[0][0]
        assert first_audio >= stopped  # nothing is heard before the turn is confirmed
        assert h.types()[:7] == [
            "SpeechStarted", "SpeechStopped", "InputCommitted", "ItemAdded",
            "UserTranscript", "ReplyStarted", "ReplyText",
        ]  # fmt: skip
        assert h.of(m.ReplyDone)[0].item.text == "No, it is sunny."
        assert marks["overhead"] is not None and marks["overhead"] < 25


async def test_a_speculation_is_discarded_without_a_trace_when_the_caller_goes_on() -> None:
    engines = fake_engines(
        ["I would like a table.", "I would like a table for two?"], ["For two? Sure.", "Done."]
    )
    async with Harness(engines) as h:
        engines.llm.delay(h.clock, 0.2)
        await h.feed(tone(0.6))
        await h.feed(silence(0.45))  # a pause: the early transcript starts a speculative reply
        assert len(engines.llm.seen) == 1 and not h.of(m.ReplyStarted)
        await h.feed(tone(0.5))  # … but the caller continues
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert [e.status for e in h.of(m.ReplyDone)] == ["completed"]
        assert len(h.of(m.ReplyStarted)) == 1
        assert engines.llm.seen[-1][-1].content == "I would like a table for two?"
        assert [i.role for i in h.session.conversation.items] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("words", "ends_after_ms"),
    [("Where is the station?", 250), ("I am at the station.", 600), ("I am going to the", 1100)],
)
async def test_the_words_heard_set_the_silence_that_ends_the_turn(
    words: str, ends_after_ms: int
) -> None:
    engines = fake_engines([words], ["Okay."])
    async with Harness(engines) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.SpeechStopped)
        stopped_at = h.timed(m.SpeechStopped)[0][0]
        speech_end = 0.6
        assert (stopped_at - speech_end) * 1000 == pytest.approx(ends_after_ms, abs=40 + 20)


async def test_a_mid_sentence_pause_does_not_end_a_turn_that_trails_off() -> None:
    engines = fake_engines(
        ["I would like to book a table for", "I would like to book a table for two."], ["Sure."]
    )
    async with Harness(engines) as h:
        await h.feed(tone(0.8))
        await h.feed(silence(0.5))
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(h.of(m.InputCommitted)) == 1
        assert h.of(m.UserTranscript)[0].transcript.endswith("two.")


@pytest.mark.parametrize(
    ("completion", "ends_after_ms"),
    [(0.00002, 600), (0.5, 250), (None, 250)],  # unfinished, finished, the judge cannot tell
)
async def test_the_llms_judgement_moves_the_end_of_a_question(
    completion: float | None, ends_after_ms: int
) -> None:
    engines = fake_engines(["Can you tell me?"], ["Sure."])
    engines.judge = judge = ScriptedJudge({"Can you tell me?": completion} if completion else {})
    async with Harness(engines) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.SpeechStopped)
        stopped_at = h.timed(m.SpeechStopped)[0][0]
        assert (stopped_at - 0.6) * 1000 == pytest.approx(ends_after_ms, abs=40 + 20)
    # the judge saw the prompt the reply gets: the instructions, then the caller's words
    assert judge.seen[0][0].role == "system"
    assert judge.seen[0][-1].content == "Can you tell me?"
    assert engines.llm.seen[0] == judge.seen[0]


async def test_the_judges_time_counts_as_model_time_not_overhead() -> None:
    engines = fake_engines(["Is it raining?"], ["No, it is sunny."])
    engines.judge = judge = ScriptedJudge({}, default=0.6)
    async with Harness(engines) as h:
        judge.delay(h.clock, 0.08)
        engines.llm.delay(h.clock, 0.05)
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        marks = h.of(m.TurnMetrics)[0].marks
        assert marks["llm_first_token"] - marks["asr_done"] == pytest.approx(130, abs=25)
        assert marks["overhead"] is not None and marks["overhead"] < 25


@pytest.mark.parametrize(("completion", "ends_after_ms"), [(0.00002, 600), (0.5, 250)])
async def test_a_judge_that_scores_beside_replies_is_asked_with_the_reply_not_before_it(
    completion: float, ends_after_ms: int
) -> None:
    """The batched LLM evaluates the judge's prompt once for both: the speculative reply is
    asked for at the same time, so its first token does not wait for the judge's answer, and
    the judge still sets how long the pause must be."""
    engines = fake_engines(["Can you tell me?"], ["Sure."])
    engines.judge = judge = ScriptedJudge({"Can you tell me?": completion}, beside_replies=True)
    async with Harness(engines) as h:
        judge.delay(h.clock, 0.08)
        engines.llm.delay(h.clock, 0.05)
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        stopped_at = h.timed(m.SpeechStopped)[0][0]
        assert (stopped_at - 0.6) * 1000 == pytest.approx(ends_after_ms, abs=40 + 20)
        marks = h.of(m.TurnMetrics)[0].marks
        assert marks["llm_first_token"] - marks["asr_done"] == pytest.approx(50, abs=25)
    assert engines.llm.seen[0] == judge.seen[0]


@pytest.mark.parametrize("beside", [True, False])
async def test_a_slow_judge_cannot_hold_a_finished_sentence_past_its_longest_pause(
    beside: bool,
) -> None:
    """Whatever the judge says of a question, it waits at most ``statement_ms``: a judge slower
    than that (a busy LLM) no longer keeps the turn open for ``incomplete_ms``. Asked beside the
    reply, the reply does not wait for it either."""
    engines = fake_engines(["Is it raining?"], ["No."])
    engines.judge = judge = ScriptedJudge({}, default=0.9, beside_replies=beside)
    async with Harness(engines, limits=SessionLimits(judge_timeout=5.0)) as h:
        judge.delay(h.clock, 2.0)
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone, limit_s=10)
        stopped_at = h.timed(m.SpeechStopped)[0][0]
        assert (stopped_at - 0.6) * 1000 == pytest.approx(600, abs=40 + 20)
        started_at = h.timed(m.ReplyStarted)[0][0]
        judged_at = 0.6 + 0.1 + 2.0  # the pause (~100 ms), then the judge's 2 s
        if beside:
            assert started_at < judged_at - 0.9
        else:  # the reply is asked for once the judge has spoken
            assert started_at >= judged_at - 0.05
        assert h.of(m.ReplyDone)[0].item.text == "No."
        assert len(h.of(m.InputCommitted)) == 1


async def test_a_late_judgement_of_words_the_caller_went_on_from_is_ignored() -> None:
    """The judge found the first half finished, but only once the caller had spoken again and
    paused once more: that answer is for words that are no longer the turn's, so it cannot end
    the turn; the second half's own (unfinished: the longest pause) does."""
    first, whole = "Can you tell me?", "Can you tell me what time it opens?"
    engines = fake_engines([first, whole], ["It opens at nine."])
    engines.judge = judge = ScriptedJudge({first: 0.9, whole: 0.00002}, beside_replies=True)
    async with Harness(engines) as h:
        judge.delay(h.clock, 0.9)
        await h.feed(tone(0.6))
        await h.feed(silence(0.5))
        await h.feed(tone(0.3))  # speech again from 1.1 s to 1.4 s
        # the first half's "finished" comes ~0.2 s into this pause, the second's ~1 s into it
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(h.of(m.InputCommitted)) == 1
        assert h.of(m.UserTranscript)[0].transcript == whole
        stopped_at = h.timed(m.SpeechStopped)[0][0]
        assert (stopped_at - 1.4) * 1000 == pytest.approx(600, abs=40 + 20)


async def test_a_failing_judge_leaves_the_words_to_decide() -> None:
    class BrokenJudge:
        async def end_of_turn(self, messages: list[object]) -> float | None:
            raise EngineError("llama.cpp fell over", engine="llm")

    engines = fake_engines(["Is it raining?"], ["No."])
    engines.judge = BrokenJudge()  # type: ignore[assignment]
    async with Harness(engines) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert (h.timed(m.SpeechStopped)[0][0] - 0.6) * 1000 == pytest.approx(250, abs=60)
        assert h.of(m.ReplyDone)[0].item.text == "No."
        assert not h.of(m.SessionError)  # the judge is an aid: its failure is only logged


async def test_a_question_judged_unfinished_survives_a_half_second_pause() -> None:
    first, whole = "Can you tell me?", "Can you tell me what time the museum opens?"
    engines = fake_engines([first, whole], ["It opens at nine."])
    engines.judge = ScriptedJudge({first: 0.00002, whole: 0.6})
    async with Harness(engines) as h:
        await h.feed(tone(0.6))
        await h.feed(silence(0.5))
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert len(h.of(m.InputCommitted)) == 1
        assert h.of(m.UserTranscript)[0].transcript == whole


async def test_streaming_asr_sends_the_words_so_far_while_the_caller_speaks() -> None:
    engines = fake_engines(
        ["What is", "What is the weather", "What is the weather like?"], ["Sunny."]
    )
    engines.judge = judge = ScriptedJudge({}, default=0.5)
    async with Harness(engines, tuning=Tuning(interim_asr_ms=500)) as h:
        await h.feed(tone(1.3))
        interim = h.timed(m.InterimTranscript)
        assert [e.transcript for _, e in interim] == ["What is", "What is the weather"]
        assert not h.of(m.SpeechStopped)  # all while the caller was still speaking
        assert engines.asr.calls[0] < engines.asr.calls[1]  # the words so far, growing
        await h.feed_until(silence(0.02), m.ReplyDone)
        # the final transcript comes from the whole utterance; the judge saw each version
        assert h.of(m.UserTranscript)[0].transcript == "What is the weather like?"
        assert [s[-1].content for s in judge.seen] == [
            "What is", "What is the weather", "What is the weather like?"
        ]  # fmt: skip
        assert len(h.of(m.InputCommitted)) == 1


async def test_streaming_asr_is_off_by_default() -> None:
    engines = fake_engines(["What is the weather like?"], ["Sunny."])
    async with Harness(engines) as h:
        await h.feed(tone(1.3))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert not h.of(m.InterimTranscript) and len(engines.asr.calls) == 1


async def test_a_cough_holds_the_agent_for_a_moment_and_changes_nothing() -> None:
    engines = fake_engines(["tell me a story", ""], [LONG_REPLY])  # no words in a cough
    async with Harness(engines) as h:
        await h.feed(tone(0.8))
        await h.feed_until(silence(0.02), m.ReplyAudio)
        await h.feed(silence(1.0))
        cough = h.clock.now()
        await h.feed(tone(0.1))  # shorter than interrupt_min_speech_ms
        await h.feed(silence(0.4))
        frames = [t for t, _ in h.timed(m.ReplyAudio)]
        held = [b - a for a, b in itertools.pairwise(frames) if a >= cough - 0.1]
        assert max(held) > 0.1  # the agent paused …
        await h.feed_until(silence(0.02), m.ReplyDone)
        done = h.of(m.ReplyDone)[0]
        assert done.status == "completed"  # … then finished its sentence, losing nothing
        assert done.item.text == LONG_REPLY
        assert sum(len(e.audio) for e in h.of(m.ReplyAudio)) == 20 * 200 * 24


async def _held_from(hold_threshold: float, cut_in: list[np.ndarray]) -> tuple[float, Harness]:
    """The agent speaks; the caller says ``cut_in`` (parts fed in turn): seconds from its start
    to the agent's last frame before it first fell silent, and the harness (still open)."""
    engines = fake_engines(["tell me a story", "stop"], [LONG_REPLY])
    h = Harness(engines, tuning=Tuning(hold_threshold=hold_threshold))
    await h.__aenter__()
    await h.feed(tone(0.8))
    await h.feed_until(silence(0.02), m.ReplyAudio)
    await h.feed(silence(1.0))
    start = h.clock.now()
    for part in cut_in:
        await h.feed(part)
    frames = [t for t, _ in h.timed(m.ReplyAudio)]
    last = min(
        a for a, b in itertools.pairwise([*frames, math.inf]) if b - a > 0.06 and a >= start - 0.1
    )
    return last - start, h


async def test_a_word_s_soft_first_sound_holds_the_agent_with_a_hold_threshold() -> None:
    soft_then_loud = [tone(0.1, amplitude=800), tone(0.5)]
    at_threshold, h = await _held_from(0.0, soft_then_loud)
    await h.__aexit__(None, None, None)
    at_hint, h = await _held_from(0.15, soft_then_loud)
    await h.__aexit__(None, None, None)
    assert at_hint < 0.05 and at_threshold >= 0.09  # held at its first window, not after it


async def test_a_soft_sound_that_is_not_speech_only_pauses_the_agent() -> None:
    held, h = await _held_from(0.15, [tone(0.1, amplitude=800), silence(0.4)])
    try:
        assert held < 0.05  # held at once …
        await h.feed_until(silence(0.02), m.ReplyDone)
        done = h.of(m.ReplyDone)[0]
        assert done.status == "completed" and done.item.text == LONG_REPLY  # … then went on
        assert len(h.of(m.SpeechStarted)) == 1  # (the first turn's): no turn began
    finally:
        await h.__aexit__(None, None, None)


async def test_a_failing_recognizer_is_reported_once_and_the_session_goes_on() -> None:
    engines = fake_engines(["unused"], ["Hi."])

    async def broken(audio: object, *, owner: str = "") -> str:
        raise EngineError("model crashed", engine="asr")

    engines.asr.transcribe = broken  # type: ignore[method-assign]
    async with Harness(engines) as h:
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.UserTranscript)
        assert not h.of(m.SessionError)  # reported for its item, once (the early try is retried)
        (failed,) = h.of(m.TranscriptionFailed)
        assert failed.item_id == h.of(m.InputCommitted)[0].item_id
        assert failed.code == "asr_failed"
        assert h.of(m.UserTranscript)[0].transcript == ""
        assert h.session.closed_reason is None
        await h.feed(silence(0.3))
        assert not h.of(m.ReplyStarted)


async def test_a_failing_llm_fails_that_reply_only_and_the_next_turn_works() -> None:
    engines = fake_engines(["first?", "second?"], ["Fine."])
    calls = 0
    original = engines.llm.stream

    async def flaky(messages, options):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:  # the first turn's reply
            raise EngineError("llama.cpp crashed", engine="llm")
            yield ""
        async for token in original(messages, options):
            yield token

    engines.llm.stream = flaky  # type: ignore[method-assign]
    async with Harness(engines, tuning=Tuning(speculative_reply=False)) as h:
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.ReplyDone)
        failed = h.of(m.ReplyDone)[0]
        assert failed.status == "failed" and "crashed" in (failed.reason or "")
        assert [e.code for e in h.of(m.SessionError)] == ["response_failed"]
        await h.feed(silence(0.3))
        await h.feed(tone(0.5))
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.1))
        assert h.of(m.ReplyDone)[1].status == "completed"
        assert [i.text for i in h.session.conversation.items if i.role == "user"] == [
            "first?",
            "second?",
        ]


class _StuckTts:
    sample_rate = 24_000

    async def synthesize(self, text: str, **options: object) -> np.ndarray:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def overdue(self) -> int:
        return 0


async def test_timeouts_run_on_the_sessions_clock() -> None:
    """A TTS that never answers fails the reply after ``tts_timeout`` of *virtual* time, and a
    judge slower than ``judge_timeout`` leaves the decision to the words: no test waits."""
    engines = fake_engines(["what is it?"], ["Fine."])
    engines.tts = _StuckTts()
    judge = ScriptedJudge({}, default=0.9)
    engines.judge = judge
    limits = SessionLimits(judge_timeout=1.0)
    async with Harness(engines, limits=limits) as h:
        judge.delay(h.clock, 5.0)
        await h.feed(tone(0.5))
        await h.feed_until(silence(0.02), m.ReplyStarted)
        judged_at = h.timed(m.ReplyStarted)[0][0]
        start = h.clock.now()
        await h.feed_until(silence(0.02), m.ReplyDone, limit_s=40)
        (done,) = h.of(m.ReplyDone)
        assert done.status == "failed" and "no audio within 30.0 s" in (done.reason or "")
        assert 29.9 <= h.clock.now() - start <= 30.5
    assert judged_at < 2.5  # the judge's 5 s were cut at 1 s; the words ("?") ended the turn
