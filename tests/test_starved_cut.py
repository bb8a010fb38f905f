"""A reply whose model writes slower than the voice speaks: when the audio made so far is about
to run out and no piece boundary has come, the complete words pending go to TTS at once
(``ReplySettings.starved_cut_ms``) instead of the listener hearing silence until the next comma
— or, for a run of digits with no boundary at all, until the end of the reply. On virtual time,
with a tone per word for speech."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

from pipeline.clock import VirtualClock
from pipeline.context import ChatMessage
from pipeline.engines import GenerationOptions, LlmEvent, StreamEnd
from pipeline.metrics import Marks
from pipeline.reply import Reply, ReplySettings, Scripted
from pipeline.text import ClauseSplitter

from .fakes import ToneTts

RATE = 24_000
FRAME_S = 0.02


class SlowLlm:
    """Streams ``tokens`` one every ``per_token`` virtual seconds."""

    def __init__(self, clock: VirtualClock, tokens: list[str], per_token: float) -> None:
        self.clock, self.tokens, self.per_token = clock, tokens, per_token

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        for token in self.tokens:
            await self.clock.sleep_until(self.clock.now() + self.per_token)
            yield token
        yield StreamEnd("stop", 0, len(self.tokens))


async def _speak(
    llm: object,
    starved_cut_ms: int,
    clock: VirtualClock,
    *,
    behind: int = 0,
    even_behind: bool = False,
) -> tuple[ToneTts, float]:
    """Run one reply; return the synthesizer (what it was asked to say) and the longest
    silence between two of the reply's frames once it has begun (seconds). ``behind``: what
    the synthesizer says of other callers' due syntheses waiting for it."""
    tts = ToneTts(ms_per_word=200)
    tts.behind = behind
    sent: list[float] = []
    settings = ReplySettings(
        trim_leading_silence=False,
        starved_cut_ms=starved_cut_ms,
        starved_cut_behind=even_behind,
    )
    reply = Reply(
        llm=llm,  # type: ignore[arg-type]
        tts=tts,
        messages=[],
        generation=GenerationOptions(),
        settings=settings,
        clock=clock,
        output_rate=RATE,
        on_audio=lambda frame: sent.append(clock.now()),
        on_text=lambda text: None,
        marks=Marks(),
    )
    task = asyncio.ensure_future(reply.run())
    while not task.done():
        await clock.advance(0.01)
    task.result()
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    return tts, max(gaps) - FRAME_S


SENTENCE = (
    "Sure, the museum opens at nine in the morning and closes late in the evening on every"
    " day of the week except on the public holidays in winter."
)


def _words(text: str) -> list[str]:
    return [token + " " for token in text.split(" ")]


async def test_a_model_slower_than_speech_is_spoken_in_words_rather_than_after_silence() -> None:
    """Four tokens a second against five words a second of speech: without the cut the
    listener hears "Sure, the museum" and then nothing until the sentence ends (~6 s)."""
    clock = VirtualClock()
    off, gap_off = await _speak(SlowLlm(clock, _words(SENTENCE), 0.25), 0, clock)
    clock = VirtualClock()
    on, gap_on = await _speak(SlowLlm(clock, _words(SENTENCE), 0.25), 250, clock)
    assert gap_off > 5.0, gap_off
    assert len(on.texts) > len(off.texts) + 3, on.texts
    assert " ".join(on.texts).split() == SENTENCE.split()  # every word, once, in order
    assert gap_on < 1.0, (gap_on, on.texts)


async def test_a_run_without_any_boundary_is_spoken_as_it_comes() -> None:
    """The degenerate reply seen with 8 callers: "A spider has 1000000…" — a run of digits,
    one token each, to the token limit. Without the cut the run waited for the end (20 s)."""
    tokens = ["A", " spider", " has", " eight", " legs", " and", " "] + ["1"] * 200
    clock = VirtualClock()
    _, gap_off = await _speak(SlowLlm(clock, tokens, 0.1), 0, clock)
    clock = VirtualClock()
    on, gap_on = await _speak(SlowLlm(clock, tokens, 0.1), 250, clock)
    assert gap_off > 15.0, gap_off
    assert gap_on < 3.0, (gap_on, on.texts)
    assert "".join(on.texts[1:]).replace(" ", "").endswith("1" * 200)


async def test_a_model_ahead_of_speech_is_cut_at_its_boundaries_only() -> None:
    clock = VirtualClock()
    cut, _ = await _speak(Scripted(SENTENCE), 250, clock)
    clock = VirtualClock()
    plain, _ = await _speak(Scripted(SENTENCE), 0, clock)
    assert cut.texts == plain.texts


async def test_no_cut_while_the_synthesizer_is_behind_unless_asked() -> None:
    """Other callers' syntheses already due wait for the synthesizer: a cut piece would wait
    behind them while more words come, so the reply waits for its boundary as without the
    cut; ``starved_cut_behind`` cuts anyway."""
    clock = VirtualClock()
    plain, _ = await _speak(SlowLlm(clock, _words(SENTENCE), 0.25), 0, clock)
    clock = VirtualClock()
    held, _ = await _speak(SlowLlm(clock, _words(SENTENCE), 0.25), 250, clock, behind=2)
    clock = VirtualClock()
    cut, _ = await _speak(
        SlowLlm(clock, _words(SENTENCE), 0.25), 250, clock, behind=2, even_behind=True
    )
    assert held.texts == plain.texts
    assert len(cut.texts) > len(plain.texts) + 3, cut.texts


def test_take_words_hands_out_complete_words_or_a_long_run() -> None:
    splitter = ClauseSplitter()
    assert splitter.feed("Sure, it is ") == []
    assert splitter.take_words() == []  # under 12 characters
    assert splitter.feed("open until nin") == []
    assert splitter.take_words() == ["Sure, it is open until"]  # "nin" may go on
    assert splitter.feed("e in the evening. ") == ["nine in the evening."]
    splitter = ClauseSplitter()
    splitter.feed("A spider has 1000000000000000000001111")  # a run of 24 after its words
    assert splitter.take_words() == ["A spider has"]
    assert splitter.take_words() == ["1000000000000000000001111"]
    assert splitter.flush() == []
