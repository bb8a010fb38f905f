"""One reply in flight: LLM stream → clause splitter → TTS → paced playout, as one task group.

Barge-in cancels the group. :meth:`Reply.interrupt` first stops the playout synchronously, so no
frame leaves after the decision even before the cancellation has unwound the tasks; then the
heard prefix of the text (:meth:`Reply.heard_text`) is what the conversation keeps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace

import numpy as np

from .audio import resample, trim_leading_silence
from .clock import Clock, timeout
from .context import ChatMessage, ToolCall
from .engines import (
    GenerationOptions,
    LanguageModel,
    LlmEvent,
    SpeechSynthesizer,
    StreamEnd,
    ToolCallDelta,
)
from .errors import EngineError, EngineTimeout, VoiceError
from .metrics import Marks
from .playout import Playout, Segment
from .text import ClauseSplitter, speakable

log = logging.getLogger("voice.reply")


@dataclass(slots=True, frozen=True)
class Speech:
    """How one reply is said: in audio or as text only, by which voice, how fast."""

    audio: bool = True
    voice: str | None = None
    speed: float = 1.0


class Scripted:
    """A language model that says ``text`` and nothing else: a reply whose words are fixed."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        yield self.text
        yield StreamEnd("stop", 0, 0)


@dataclass(slots=True)
class ReplySettings:
    frame_ms: int = 20
    lead_ms: int = 60
    first_clause_chars: int = 16
    min_clause_chars: int = 40
    first_clause_words: int = 3
    trim_leading_silence: bool = True
    """Start the first piece at its first audible sample (less 10 ms), not at the TTS's
    leading near-silence."""
    tts_timeout: float = 30.0
    tts_margin: float = 0.5
    """A later clause is due this long before the audio ahead of it runs out (a first clause
    is due when the reply began): the synthesizer serves other callers' first clauses first."""
    clause_queue: int = 4
    audio_queue: int = 2
    starved_cut_ms: int = 250
    """When the audio made so far has less than this left to play and no piece boundary has
    come (the model writes slower than the voice speaks, or a run with no boundary at all), the
    complete words pending go to TTS now rather than the listener hearing silence (0 = off)."""
    starved_cut_behind: bool = False
    """Cut even while the synthesizer is behind (other syntheses already due wait for it): the
    piece would only wait behind them, while more words come that could have gone with it, and
    each cut is one more synthesis for cores that have none to spare."""


class Reply:
    def __init__(
        self,
        *,
        llm: LanguageModel,
        tts: SpeechSynthesizer,
        messages: list[ChatMessage],
        generation: GenerationOptions,
        settings: ReplySettings,
        clock: Clock,
        output_rate: int,
        on_audio: Callable[[np.ndarray], None],
        on_text: Callable[[str], None],
        marks: Marks,
        gated: bool = False,
        speech: Speech | None = None,
        on_call: Callable[[ToolCallDelta], None] | None = None,
    ) -> None:
        self._llm = llm
        self._tts = tts
        self._messages = messages
        self._settings = settings
        self._clock = clock
        self._rate = output_rate
        self._on_text = on_text
        self._on_audio = on_audio
        self.marks = marks
        self._gate: asyncio.Event | None = asyncio.Event() if gated else None
        self._speech = speech or Speech()
        self._generation = replace(generation, spoken=self._speech.audio)
        self._on_call = on_call
        self._held_calls: list[ToolCallDelta] = []  # not told yet (see _flush_calls)
        self._played = False  # every synthesized piece has been handed to the playout
        self._made = 0  # samples synthesized so far, at the output rate
        self._synthesizing = False
        self.generated = ""
        self.text_sent = ""
        """Text-only replies: the words sent so far."""
        self.spoken_pieces = 0
        self.calls: dict[int, ToolCall] = {}
        """The function calls of the reply, by index, arguments complete once it is done."""
        self.end: StreamEnd | None = None
        """Why the LLM stopped, and the usage (None until it has)."""
        self.playout = Playout(
            clock,
            self._emit,
            rate=output_rate,
            frame_ms=settings.frame_ms,
            lead_ms=settings.lead_ms,
        )

    @property
    def gated(self) -> bool:
        return self._gate is not None

    @property
    def output_started(self) -> bool:
        return self.playout.sent_samples > 0

    def release(self) -> None:
        """Let a speculative reply be heard: until then it generates and synthesizes, silently."""
        if self._gate is not None:
            self._gate.set()
            self.marks.set_once("released", self._clock.now())
        self._flush_calls()

    def interrupt(self) -> None:
        """Stop emitting audio now; the caller then cancels the task running :meth:`run`."""
        self.playout.stop()

    @property
    def audio(self) -> bool:
        return self._speech.audio

    def heard_text(self) -> str:
        """What the listener got: the words heard so far (text-only: the words sent)."""
        return self.playout.heard_text() if self.audio else self.text_sent.strip()

    def spoken_text(self) -> str:
        """All the text that was turned into speech (the full reply when it completed)."""
        if not self.audio:
            return self.text_sent.strip()
        return self.playout.heard_text(self.playout.sent_samples)

    async def run(self) -> None:
        """Generate, synthesize and play the whole reply. Cancel-safe: cancelling stops all three
        stages; engine failures raise :class:`EngineError`."""
        s = self._settings
        clauses: asyncio.Queue[str | None] = asyncio.Queue(maxsize=s.clause_queue)
        segments: asyncio.Queue[Segment | None] = asyncio.Queue(maxsize=s.audio_queue)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._generate(clauses))
                tg.create_task(self._synthesize(clauses, segments))
                await self._play(segments)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _generate(self, clauses: asyncio.Queue[str | None]) -> None:
        splitter = ClauseSplitter(
            min_clause_chars=self._settings.min_clause_chars,
            first_clause_chars=self._settings.first_clause_chars,
            first_clause_words=self._settings.first_clause_words,
        )
        self.marks.set_once("llm_start", self._clock.now())
        async with aclosing(self._llm.stream(self._messages, self._generation)) as events:  # type: ignore[type-var]
            async for event in events:
                if isinstance(event, StreamEnd):
                    self.end = event
                    continue
                self.marks.set_once("llm_first_token", self._clock.now())
                if isinstance(event, ToolCallDelta):
                    self._add_call(event)
                    continue
                self.generated += event
                if not self._speech.audio:
                    await self._text_only(event)
                    continue
                pieces = splitter.feed(event)
                if not pieces and self._starving(clauses):
                    pieces = splitter.take_words()
                for clause in pieces:
                    self.marks.set_once("first_clause", self._clock.now())
                    await clauses.put(clause)
        if not self._speech.audio:
            await clauses.put(None)
            return
        for clause in splitter.flush():
            self.marks.set_once("first_clause", self._clock.now())
            await clauses.put(clause)
        await clauses.put(None)

    def _starving(self, clauses: asyncio.Queue[str | None]) -> bool:
        """The listener hears this reply and will soon run out of it: nothing of it is waiting
        for or in the synthesizer, the synthesizer is not behind (``starved_cut_behind``), and
        what it made has under ``starved_cut_ms`` left to play."""
        margin = self._settings.starved_cut_ms
        playout = self.playout
        if margin <= 0 or not self.output_started or playout.paused or playout.stopped:
            return False
        if self._synthesizing or not clauses.empty():
            return False
        if (self._made - playout.played_samples()) * 1000 >= margin * self._rate:
            return False
        return self._settings.starved_cut_behind or not self._tts.overdue()  # (takes a lock)

    async def _text_only(self, delta: str) -> None:
        """``output_modalities: ["text"]``: the words go out as they come, nothing is spoken."""
        if self._gate is not None:
            await self._gate.wait()
        self.text_sent += delta
        self._on_text(delta)

    def _add_call(self, delta: ToolCallDelta) -> None:
        call = self.calls.get(delta.index)
        arguments = (call.arguments if call else "") + delta.arguments
        self.calls[delta.index] = ToolCall(delta.call_id, delta.name, arguments)
        self._held_calls.append(delta)
        self._flush_calls()

    def _flush_calls(self) -> None:
        """Tell the calls once the reply is heard — and, after words spoken before a call
        ("Let me check that"), once those words have started: the message comes first."""
        if self._gate is not None and not self._gate.is_set():
            return
        if self.audio and self.generated.strip() and self.spoken_pieces == 0 and not self._played:
            return
        held, self._held_calls = self._held_calls, []
        for delta in held:
            if self._on_call is not None:
                self._on_call(delta)

    async def _synthesize(
        self, clauses: asyncio.Queue[str | None], segments: asyncio.Queue[Segment | None]
    ) -> None:
        first = True
        began = self._clock.now()
        runs_out = began  # when the audio made so far has played, at the soonest (played as made)
        while (clause := await clauses.get()) is not None:
            self._synthesizing = True
            self.marks.set_once("tts_start", self._clock.now())
            due = began if first else runs_out - self._settings.tts_margin
            try:
                async with timeout(self._clock, self._settings.tts_timeout):
                    audio = await self._tts.synthesize(
                        speakable(clause),
                        speed=self._speech.speed,
                        voice=self._speech.voice,
                        due=due,
                    )
            except TimeoutError:
                raise EngineTimeout(
                    f"tts: no audio within {self._settings.tts_timeout:.1f} s", engine="tts"
                ) from None
            if audio.size == 0:
                self._synthesizing = False
                continue
            if self._settings.trim_leading_silence and first:
                audio = trim_leading_silence(audio, self._tts.sample_rate)
            first = False
            self.marks.set_once("tts_first_audio", self._clock.now())
            audio = resample(audio, self._tts.sample_rate, self._rate)
            runs_out = max(runs_out, self._clock.now()) + len(audio) / self._rate
            self._made += len(audio)
            self._synthesizing = False
            await segments.put(Segment(clause, audio))
        await segments.put(None)

    async def _play(self, segments: asyncio.Queue[Segment | None]) -> None:
        if self._gate is not None:
            await self._gate.wait()
        while (segment := await segments.get()) is not None:
            if self.playout.stopped:
                return
            self._on_text(segment.text if self.spoken_pieces == 0 else " " + segment.text)
            self.spoken_pieces += 1
            self._flush_calls()
            await self.playout.play(segment)
        self._played = True
        self._flush_calls()
        await self.playout.drain()

    def _emit(self, frame: np.ndarray) -> None:
        self.marks.set_once("first_audio_sent", self._clock.now())
        self._on_audio(frame)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if isinstance(exc, VoiceError | asyncio.CancelledError):
            return exc
    exc = group.exceptions[0]
    log.error("reply failed", exc_info=exc)
    return EngineError(f"reply failed: {exc!r}", engine="reply")
