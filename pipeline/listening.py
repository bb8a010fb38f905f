"""Listening: the caller's audio, from the transport to "the turn is over, these are the words".

One :class:`Listener` per session. :meth:`Listener.append` takes caller audio (resampled to 16 kHz,
rate-limited, buffered); :meth:`Listener.run` scores it with the VAD and feeds the turn detector
(``turns.py``); at a pause it transcribes early, asks the end-of-turn judge and lets the words set
the silence that ends the turn (``endpointing.py``); when the turn ends it hands the owner an
:class:`EndedTurn`. Speech over the agent is an *overlap*: the agent is held, the overlap is
transcribed at the caller's first pause, and its words decide (``backchannel.py``): a backchannel
resumes the agent and is forgotten, anything else interrupts it. It never touches a reply
itself: it tells its owner (the session) through the :class:`ListenerOwner` hooks — hold the
agent's voice, the caller cut in, prepare a reply on these words — and the owner decides.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from .audio import PIPELINE_RATE, Resampler, levels_dbfs
from .backchannel import Overlap, classify, words_of
from .clock import Clock, timeout
from .context import ChatMessage, new_id
from .endpointing import EndpointSettings, for_eagerness, longest_silence, silence_needed
from .engines import Engines
from .errors import EngineError, EngineTimeout, LimitExceeded, ProtocolError
from .input_buffer import InputBuffer
from .messages import (
    IdleTimeout,
    InterimTranscript,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptionFailed,
)
from .metrics import Marks
from .replying import ReplyHandle
from .settings import ASR_TIMEOUT_SPAN_S, ResponseOptions, SessionLimits, SessionSettings, Tuning
from .turns import TurnDetector, TurnEvent, TurnEventKind, TurnSettings

MIN_COMMIT_SAMPLES = PIPELINE_RATE // 10  # OpenAI's rule: at least 100 ms to commit
IDLE_INSTRUCTIONS = (
    "The caller has said nothing for a while. In one short sentence, invite them to go on."
)
"""Added to the session's instructions for the reply to an idle timeout."""
_END_PUNCTUATION = ".,;:!?…"
_NOT_SPEECH_YET = (TurnEventKind.NOISE, TurnEventKind.PAUSED, TurnEventKind.TURN_ENDED)
"""Turn events after which a held agent goes on (unless an overlap awaits its words)."""


class ListenerOwner(Protocol):
    """What a listener asks of its session."""

    def hold_reply(self) -> None:
        """The caller may be cutting in: hold the agent's voice (it may go on)."""

    def resume_reply(self) -> None:
        """It was not speech, or the caller paused: a held reply goes on."""

    def caller_started(self) -> None:
        """The caller speaks: a reply not yet heard is stale."""

    def barge_in(self) -> None:
        """The caller has spoken long enough to interrupt the agent."""

    def speaking(self) -> bool:
        """The agent's voice is being heard (or is held)."""

    def may_answer(self, text: str) -> bool:
        """Whether these words would get a reply now."""

    def prepare_reply(self, text: str, marks: Marks) -> ReplyHandle:
        """Start a silent, speculative reply to ``text`` (the turn is not confirmed yet)."""

    def prompt_with(self, text: str) -> list[ChatMessage]:
        """The messages a reply to ``text`` would start with (for the end-of-turn judge)."""

    def turn_ended(self, turn: EndedTurn) -> None:
        """The caller's turn is over: it becomes an item, is transcribed, maybe answered."""

    def replying(self) -> bool:
        """A reply of the conversation is under way (until its audio has played)."""

    def create_response(self, options: ResponseOptions | None = None) -> str:
        """Start a reply now (raises :class:`ProtocolError` when one is under way)."""


@dataclass(slots=True)
class EndedTurn:
    item_id: str
    audio: np.ndarray
    early: asyncio.Task[str] | None
    """A transcription started at the pause, covering all of ``audio`` (None: transcribe)."""
    marks: Marks
    speculation: ReplyHandle | None
    respond: bool


@dataclass(slots=True)
class _Turn:
    item_id: str
    start: int  # absolute sample index, prefix padding included
    early: asyncio.Task[str] | None = None
    early_end: int = 0
    interim: asyncio.Task[None] | None = None
    interim_end: int = 0
    marks: Marks | None = None
    speculation: ReplyHandle | None = None
    judging: asyncio.Task[None] | None = None
    """Waits for the judge's answer (asked beside the reply) to time the pause; the early
    transcript does not wait for it."""
    sent_words: list[str] | None = None
    """The interim words given so far (``InterimTranscript.delta``), compared without case."""
    onset: float = 0.0
    """Input-audio time (s) of the speech onset."""
    overlap: bool = False
    """Spoken over the agent, and not yet known to be an interruption: the agent is held until
    the words say whether it was a backchannel."""
    backchannel: str | None = None
    """The overlap's words so far make a backchannel: the agent resumes once the silence after
    them is long enough (``resume_silence_ms``); more speech first makes this None again."""


class Listener:
    def __init__(
        self,
        owner: ListenerOwner,
        engines: Engines,
        settings: SessionSettings,
        *,
        limits: SessionLimits,
        tuning: Tuning,
        clock: Clock,
        log: logging.LoggerAdapter[logging.Logger],
        owner_id: str,
        emit: Callable[[SessionEvent], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.owner = owner
        self.engines = engines
        self.settings = settings
        self.limits = limits
        self.tuning = tuning
        self.clock = clock
        self.log = log
        self._owner_id = owner_id
        self._emit = emit
        self._spawn = spawn
        self.closed = False
        self._vad = engines.vad.stream()
        self._detector = self._new_detector()
        self._buffer = InputBuffer()
        self._resampler: Resampler | None = None
        self._pending: list[np.ndarray] = []
        self._pending_samples = 0
        self._lead_s = 0.0  # caller audio received ahead of the clock (drains in real time)
        self._lead_at: float | None = None
        self._scored = 0  # absolute index up to which the VAD has scored audio
        self._wake = asyncio.Event()
        self._turn: _Turn | None = None
        self._idle_from = 0  # absolute sample index since which the caller has been idle
        self._handlers: dict[TurnEventKind, Callable[[TurnEvent, TurnSettings], None]] = {
            TurnEventKind.HINT: self._on_onset,
            TurnEventKind.ONSET: self._on_onset,
            TurnEventKind.SPEECH_STARTED: self._on_speech_started,
            TurnEventKind.INTERRUPT: self._on_interrupt,
            TurnEventKind.PAUSED: self._on_paused,
            TurnEventKind.RESUMED: self._on_resumed,
            TurnEventKind.TURN_ENDED: self._on_turn_ended,
        }

    @property
    def in_turn(self) -> bool:
        """The caller is in the middle of a turn."""
        return self._turn is not None

    # ---------------------------------------------------------------- commands

    async def run(self) -> None:
        """Score caller audio until :meth:`close`. Cancel-safe."""
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            await self._score_pending()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def update(self, settings: SessionSettings) -> None:
        old, self.settings = self.settings, settings
        new_td, old_td = settings.turn_detection, old.turn_detection
        if new_td != old_td:
            self._idle_from = self._buffer.end  # a new idle timeout counts from now
        if _detection(new_td) != _detection(old_td):  # (not for an idle timeout alone)
            self._detector = self._new_detector()
            self.discard_turn()

    def append(self, samples: np.ndarray, rate: int) -> None:
        """Caller audio (int16 mono at ``rate``). Raises :class:`LimitExceeded` when it arrives
        faster than the VAD can follow or overflows the turn buffer (the audio is dropped)."""
        if self._resampler is None or self._resampler.rate_in != rate:
            self._resampler = Resampler(rate, PIPELINE_RATE)
        pcm = self._resampler.process(samples)
        if self.settings.turn_detection is None:
            if self._buffer.duration() + len(pcm) / PIPELINE_RATE > self.limits.max_input_buffer_s:
                raise LimitExceeded(
                    f"input audio buffer is full ({self.limits.max_input_buffer_s:g} s);"
                    " commit or clear it",
                    code="input_audio_buffer_full",
                )
            self._buffer.append(pcm, self.clock.now())
            self._scored = self._buffer.end
            return
        self._check_rate(len(pcm))
        self._buffer.append(pcm, self.clock.now())
        self._pending.append(pcm)
        self._pending_samples += len(pcm)
        self._wake.set()

    def _check_rate(self, samples: int) -> None:
        limit_ms = self.limits.max_pending_input_ms
        now = self.clock.now()
        lead = max(0.0, self._lead_s - (now - self._lead_at if self._lead_at is not None else 0.0))
        lead += samples / PIPELINE_RATE
        # two ways to be too fast: ahead of real time (a burst; whatever the VAD's speed), or
        # ahead of the VAD (a VAD slower than real time)
        behind_vad = self._pending_samples + samples > limit_ms * PIPELINE_RATE // 1000
        if lead * 1000 > limit_ms or behind_vad:
            raise LimitExceeded(
                f"audio is arriving faster than real time: more than {limit_ms} ms is waiting;"
                f" {samples * 1000 // PIPELINE_RATE} ms dropped",
                code="input_audio_rate_exceeded",
            )
        self._lead_s, self._lead_at = lead, now

    def commit(self) -> None:
        """Make the buffered audio a user item (manual turns, or forcing a turn end)."""
        start = self._turn.start if self._turn else self._buffer.start
        if self._buffer.end - start < MIN_COMMIT_SAMPLES:
            raise ProtocolError(
                "buffer too small: expected at least 100 ms of audio",
                code="input_audio_buffer_commit_empty",
            )
        turn = self._turn or _Turn(new_id("item"), start)
        self._turn = None
        self._overlap_interrupts(turn, "the turn was committed")
        self._detector.reset()
        self._hand_over(turn, self._buffer.end, Marks({"turn_end": self.clock.now()}), False)

    def clear(self) -> None:
        self.discard_turn()
        self._buffer.clear()
        self._detector.reset()

    def discard_turn(self) -> None:
        if self._turn is not None:
            if self._turn.overlap:
                self.owner.resume_reply()  # (held for an overlap that is no more)
            self._drop_early(self._turn)
            if self._turn.interim is not None:
                self._turn.interim.cancel()
        self._turn = None

    async def transcribe(self, audio: np.ndarray) -> str:
        """The text of ``audio``; raises :class:`EngineError` (:class:`EngineTimeout` past the
        limit, ``limits.asr_timeout`` per 30 s of audio). Cancel-safe."""
        spans = max(1, math.ceil(len(audio) / (ASR_TIMEOUT_SPAN_S * PIPELINE_RATE)))
        seconds = self.limits.asr_timeout * spans
        try:
            async with timeout(self.clock, seconds):
                return await self.engines.asr.transcribe(audio, owner=self._owner_id)
        except TimeoutError:
            raise EngineTimeout(
                f"transcription timed out after {seconds:g} s", engine="asr"
            ) from None

    # ---------------------------------------------------------------- the VAD and turns

    async def _score_pending(self) -> None:
        window = self._vad.window
        while self._pending and not self.closed:
            data = np.concatenate(self._pending)
            usable = len(data) - len(data) % window
            if usable == 0:
                return
            self._pending = [data[usable:]] if usable < len(data) else []
            self._pending_samples = len(data) - usable
            windows = data[:usable].reshape(-1, window)
            probabilities = await self._vad.probabilities(windows)
            # the loudness only matters to the early pause (``turns.py``): skipped when it is off
            levels = levels_dbfs(windows) if self._detector.early_pause_db > 0 else None
            for i, probability in enumerate(probabilities):
                level = None if levels is None else levels[i]
                self._scored += window
                self._on_window(probability, self._scored, level)

    def _on_window(self, probability: float, end: int, level_db: float | None = None) -> None:
        td = self.settings.turn_detection
        if td is None:
            return
        duration = self._vad.window / PIPELINE_RATE
        for event in self._detector.feed(probability, end / PIPELINE_RATE, duration, level_db):
            self._on_turn_event(event, td)
        turn = self._turn  # (speech only: not while a pause's words are being transcribed)
        if turn is not None and turn.overlap and turn.early is None and self._too_long(turn, end):
            self._overlap_interrupts(turn, "it is too long for a backchannel")
        if self._turn is not None and self.tuning.interim_asr_ms > 0:
            self._maybe_interim(self._turn, end)
        self._check_idle(td, end)
        if self._turn is None:
            keep = (td.prefix_padding_ms + td.min_speech_ms) * PIPELINE_RATE // 1000 + 1024
            self._buffer.trim_before(end - keep)
        elif self._buffer.end - self._turn.start > self.limits.max_input_buffer_s * PIPELINE_RATE:
            self.log.info("turn longer than %ss: ending it", self.limits.max_input_buffer_s)
            self._detector.reset()
            self._end_turn(end)

    def _on_turn_event(self, event: TurnEvent, td: TurnSettings) -> None:
        overlap = self._turn is not None and self._turn.overlap  # (it waits for its words)
        if event.kind in _NOT_SPEECH_YET and not overlap:
            self.owner.resume_reply()  # not a real interruption: a held agent goes on
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event, td)

    def _on_onset(self, event: TurnEvent, td: TurnSettings) -> None:
        if self.settings.interrupt_response and self.tuning.pause_on_onset:
            self.owner.hold_reply()  # hold the agent's voice at the first speech window

    def _on_speech_started(self, event: TurnEvent, td: TurnSettings) -> None:
        start = max(0, int((event.at * 1000 - td.prefix_padding_ms) * PIPELINE_RATE / 1000))
        self._turn = _Turn(new_id("item"), max(start, self._buffer.start), onset=event.at)
        self._turn.overlap = self._judging_overlaps and self.owner.speaking()
        self._emit(SpeechStarted(self._turn.item_id, self._turn.start * 1000 // PIPELINE_RATE))
        self.owner.caller_started()

    def _on_interrupt(self, event: TurnEvent, td: TurnSettings) -> None:
        if self._turn is not None and self._turn.overlap:
            return  # its words decide
        if self.settings.interrupt_response:
            self.owner.barge_in()

    def _on_paused(self, event: TurnEvent, td: TurnSettings) -> None:
        turn = self._turn
        if turn is None:
            return
        if turn.overlap or self.tuning.early_asr or td.eagerness is not None:
            self._start_early(turn, int(event.at * PIPELINE_RATE))
        if turn.overlap:  # the turn stays open until its words are known (bounded by the ASR's)
            self._detector.set_silence_target(int(self.limits.asr_timeout * 1000))

    def _on_resumed(self, event: TurnEvent, td: TurnSettings) -> None:
        if self._turn is not None:
            self._drop_early(self._turn)
            self._turn.backchannel = None  # (more words: the overlap is judged again)

    def _on_turn_ended(self, event: TurnEvent, td: TurnSettings) -> None:
        turn = self._turn
        if turn is not None and turn.overlap and turn.backchannel is not None:
            self._backchannel_over(turn, int(event.at * PIPELINE_RATE))
        elif turn is not None:
            self._end_turn(int(event.at * PIPELINE_RATE))

    # ---------------------------------------------------------------- words before the end

    def _maybe_interim(self, turn: _Turn, end: int) -> None:
        """Transcribe the words so far if enough new speech came in and nothing is running."""
        if turn.early is not None or (turn.interim is not None and not turn.interim.done()):
            return  # paused (the early transcription covers it), or one is still running
        step = self.tuning.interim_asr_ms * PIPELINE_RATE // 1000
        if end - max(turn.start, turn.interim_end) < step:
            return
        turn.interim_end = end
        turn.interim = self._spawn(self._interim(turn, self._buffer.slice(turn.start, end)))

    async def _interim(self, turn: _Turn, audio: np.ndarray) -> None:
        try:
            text = await self.transcribe(audio)
        except (EngineError, TimeoutError) as exc:  # the turn's own transcription reports it
            self.log.debug("interim transcription failed: %s", exc)
            return
        if self._turn is not turn or not text.strip() or self.closed:
            return
        delta, turn.sent_words = interim_delta(turn.sent_words or [], text)
        self._emit(InterimTranscript(turn.item_id, text, delta))
        if turn.early is None and self._adaptive:
            await self._judge(text, Marks())  # evaluates the words' prompt ahead of the reply

    def _start_early(self, turn: _Turn, speech_end: int) -> None:
        """The caller paused: transcribe now, and maybe start the reply, while the silence is
        still being judged."""
        end = speech_end + PIPELINE_RATE // 10
        if self._adaptive:  # hold the turn open until the words say how long to wait
            self._detector.set_silence_target(self._endpoint.incomplete_ms)  # (not yet due)
        turn.marks = Marks({"speech_end": self._buffer.arrival_of(speech_end - 1)})
        turn.marks.set_once("paused", self.clock.now())
        turn.early = self._spawn(self._early(turn, self._buffer.slice(turn.start, end)))
        turn.early_end = end

    async def _early(self, turn: _Turn, audio: np.ndarray) -> str:
        marks = turn.marks or Marks()
        marks.set_once("asr_start", self.clock.now())
        try:
            text = await self.transcribe(audio)
        except (EngineError, TimeoutError) as exc:
            if turn.overlap:
                self._overlap_interrupts(turn, "its words are unknown")
            if self._turn is turn:  # the turn goes on: it is transcribed afresh when it ends
                self.log.info("early transcription failed (%s); retried at the turn's end", exc)
                turn.early, turn.marks = None, None
            else:  # handed over: the session is waiting for this transcript
                self._emit(TranscriptionFailed(turn.item_id, f"transcription failed: {exc}"))
            return ""
        marks.set_once("asr_done", self.clock.now())
        if turn.overlap and self._turn is turn and not self._overlap_decided(turn, text):
            return text  # a backchannel: the turn is gone, the agent goes on
        # whatever the judge will say, these words need no longer a pause than this
        self._time_pause(turn, longest_silence(text, self._endpoint))
        completion, judging = None, None
        if self._adaptive and self._turn is turn:
            judging = self._spawn(self._judge(text, marks))
            together = self.tuning.reply_beside_judge
            if not (together and getattr(self.engines.judge, "beside_replies", False)):
                completion, judging = await judging, None  # the reply waits for its answer
        if (
            self._turn is turn
            and not self.closed
            and self.tuning.speculative_reply
            and self.owner.may_answer(text)
        ):
            turn.speculation = self.owner.prepare_reply(text, marks)
        if judging is not None and self._turn is turn:
            # asked for together (the reply's prompt continues the judge's): the answer times
            # the pause when it comes, and the transcript is ready now for a turn that ends first
            turn.judging = self._spawn(self._judged(turn, text, judging))
            return text
        self._time_pause(turn, silence_needed(text, self._endpoint, completion))
        return text

    async def _judged(self, turn: _Turn, text: str, judging: asyncio.Task[float | None]) -> None:
        completion = await judging
        self._time_pause(turn, silence_needed(text, self._endpoint, completion))

    def _time_pause(self, turn: _Turn, silence_ms: int) -> None:
        """The pause that ends ``turn`` lasts ``silence_ms`` (at once if it already has), while
        the turn is open and the words set it."""
        td = self.settings.turn_detection
        if self._turn is turn and not self.closed and self._adaptive and td is not None:
            for event in self._detector.set_silence_target(silence_ms):
                self._on_turn_event(event, td)

    async def _judge(self, text: str, marks: Marks) -> float | None:
        """The LLM's probability that ``text`` is a finished turn (``None``: unknown). The
        prompt is the one a reply would get, so the reply re-uses its evaluation."""
        judge = self.engines.judge
        if judge is None or not text.strip():
            return None
        messages = self.owner.prompt_with(text)
        marks.set_once("judge_start", self.clock.now())
        try:
            async with timeout(self.clock, self.limits.judge_timeout):
                completion = await judge.end_of_turn(messages)
        except (EngineError, TimeoutError) as exc:
            self.log.warning("end-of-turn judge failed (%r): the words alone decide", exc)
            return None
        marks.set_once("judge_done", self.clock.now())
        self.log.debug("end of turn: p=%s for %r", completion, text)
        return completion

    # ---------------------------------------------------------------- speech over the agent

    @property
    def _judging_overlaps(self) -> bool:
        """Speech over the agent waits for its words before it interrupts."""
        return self.settings.interrupt_response and self.tuning.backchannel.enabled

    def _overlap_decided(self, turn: _Turn, text: str) -> bool:
        """The words of an overlap are known: True when they interrupt the agent (the turn goes
        on as any other), False for a backchannel (the agent resumes once the caller has been
        quiet for ``resume_silence_ms``: at once if they already have)."""
        speech_end = turn.early_end - PIPELINE_RATE // 10
        speech_ms = self._overlap_ms(turn, speech_end)
        if classify(text, speech_ms, self.tuning.backchannel) is Overlap.INTERRUPTION:
            self._overlap_interrupts(turn, f"{text.strip()!r} is not a backchannel")
            return True
        turn.backchannel = text
        turn.early = None  # (it is this very task)
        td = self.settings.turn_detection
        if td is None or not words_of(text):  # (a cough, a laugh: no sentence follows it)
            self._backchannel_over(turn, speech_end)
            return False
        for event in self._detector.set_silence_target(self.tuning.backchannel.resume_silence_ms):
            self._on_turn_event(event, td)  # (TURN_ENDED at once when quiet that long already)
        return False

    def _backchannel_over(self, turn: _Turn, speech_end: int) -> None:
        """The caller said a backchannel and stayed quiet: the turn is dropped (never answered,
        never in the conversation) and the held agent goes on."""
        self.log.info(
            "backchannel %r (%d ms) over the agent: it goes on",
            turn.backchannel,
            self._overlap_ms(turn, speech_end),
        )
        self.discard_turn()  # (resumes the held reply)
        self._detector.reset()
        self._emit(SpeechStopped(turn.item_id, speech_end * 1000 // PIPELINE_RATE))
        self.owner.resume_reply()

    @staticmethod
    def _overlap_ms(turn: _Turn, end: int) -> float:
        """Milliseconds from the overlap's onset to the absolute sample index ``end``."""
        return (end / PIPELINE_RATE - turn.onset) * 1000

    def _too_long(self, turn: _Turn, end: int) -> bool:
        return self._overlap_ms(turn, end) > self.tuning.backchannel.max_ms

    def _overlap_interrupts(self, turn: _Turn, why: str) -> None:
        """Speech over the agent is an interruption: the reply is cancelled, the turn goes on."""
        if not turn.overlap:
            return
        turn.overlap = False
        self.log.info("speech over the agent interrupts it: %s", why)
        self.owner.barge_in()
        td = self.settings.turn_detection
        if self._turn is turn and td is not None:  # the turn may end again as usual
            target = self._endpoint.incomplete_ms if self._adaptive else td.silence_duration_ms
            for event in self._detector.set_silence_target(target):
                self._on_turn_event(event, td)

    @property
    def _adaptive(self) -> bool:
        """The words (and the judge) set the silence that ends a turn: ``semantic_vad`` always,
        ``server_vad`` when ``tuning.eot_adaptive``."""
        td = self.settings.turn_detection
        return self.tuning.eot_adaptive or (td is not None and td.eagerness is not None)

    @property
    def _endpoint(self) -> EndpointSettings:
        td = self.settings.turn_detection
        if td is None or td.eagerness is None:
            return self.tuning.endpoint
        return for_eagerness(self.tuning.endpoint, td.eagerness)

    def _drop_early(self, turn: _Turn) -> None:
        """Speech resumed: the early transcript and any speculative reply are stale."""
        if turn.early is not None:
            turn.early.cancel()
        if turn.judging is not None:
            turn.judging.cancel()
        if turn.speculation is not None:
            turn.speculation.cancel("turn_detected")
        turn.early, turn.judging, turn.speculation, turn.marks = None, None, None, None

    # ---------------------------------------------------------------- the end of a turn

    def _end_turn(self, speech_end: int) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        self._overlap_interrupts(turn, "the turn ended")
        if turn.interim is not None:
            turn.interim.cancel()
        self._emit(SpeechStopped(turn.item_id, speech_end * 1000 // PIPELINE_RATE))
        end = min(speech_end + PIPELINE_RATE // 10, self._buffer.end)
        if turn.marks is None or turn.early_end < end:
            self._drop_early(turn)
            turn.marks = Marks({"speech_end": self._buffer.arrival_of(speech_end - 1)})
        turn.marks.set_once("turn_end", self.clock.now())
        self._hand_over(turn, end, turn.marks, self.settings.create_response)

    def _hand_over(self, turn: _Turn, end: int, marks: Marks, respond: bool) -> None:
        audio = self._buffer.slice(turn.start, end)
        self._buffer.trim_before(end)
        early = turn.early if turn.early is not None and turn.early_end >= end else None
        if early is None:
            self._drop_early(turn)
        self.owner.turn_ended(
            EndedTurn(turn.item_id, audio, early, marks, turn.speculation, respond)
        )

    def _new_detector(self) -> TurnDetector:
        return TurnDetector(
            self.settings.turn_detection or TurnSettings(),
            early_pause_db=self.tuning.early_pause_db,
            hold_threshold=self.tuning.hold_threshold,
            silence_from_loudness_ms=self.tuning.silence_from_loudness_ms,
        )

    # ---------------------------------------------------------------- an idle caller

    def _check_idle(self, td: TurnSettings, end: int) -> None:
        """``idle_timeout_ms``: the caller has said nothing for that long since the agent's
        reply ended (or since their own last turn). On input audio time: the timer runs while
        audio arrives, and a reply or a turn in progress holds it at zero."""
        if td.idle_timeout_ms is None or self._turn is not None or self.owner.replying():
            self._idle_from = end
        elif self._detector.quiet and (end - self._idle_from) * 1000 >= (
            td.idle_timeout_ms * PIPELINE_RATE
        ):
            self._idle_timeout(end)

    def _idle_timeout(self, end: int) -> None:
        """OpenAI's rule: the silent audio is committed as a user item (no transcription: it
        is silence, and Whisper would make words of it) and a reply is asked for."""
        turn = _Turn(new_id("item"), self._buffer.start)
        start_ms = self._idle_from * 1000 // PIPELINE_RATE
        self._idle_from = end
        self.log.info("caller silent since %d ms: committing the silence, replying", start_ms)
        self._emit(IdleTimeout(turn.item_id, start_ms, end * 1000 // PIPELINE_RATE))
        turn.early, turn.early_end = self._spawn(_no_words()), end
        self._hand_over(turn, end, Marks({"turn_end": self.clock.now()}), False)
        instructions = f"{self.settings.instructions}\n\n{IDLE_INSTRUCTIONS}"
        try:
            self.owner.create_response(ResponseOptions(instructions=instructions))
        except ProtocolError as exc:  # a reply started meanwhile: it answers
            self.log.info("no reply to the idle timeout: %s", exc)


async def _no_words() -> str:
    return ""


def _detection(td: TurnSettings | None) -> TurnSettings | None:
    """What the turn detector is built from."""
    return None if td is None else replace(td, idle_timeout_ms=None)


def interim_delta(sent: list[str], text: str) -> tuple[str, list[str]]:
    """The words of ``text`` past the ``sent`` ones, to append to them, and the words sent now.

    Words compare without case and punctuation. An interim result that does not start with
    the words already sent (the recognizer revised them) gives nothing: text once given is
    never taken back, and the final transcript (``UserTranscript``) is the whole truth. The
    last word loses its trailing punctuation, as the sentence may go on ("What time." then
    "What time is it?" gives "What time" then " is it")."""
    words = [word for word in text.split() if _key(word)]
    keys = [_key(word) for word in words]
    if len(keys) <= len(sent) or keys[: len(sent)] != sent:
        return "", sent
    new = words[len(sent) :]
    new[-1] = new[-1].rstrip(_END_PUNCTUATION)
    piece = " ".join(word for word in new if word)
    return (f" {piece}" if sent else piece), keys


def _key(word: str) -> str:
    return word.strip(_END_PUNCTUATION + "\"'()[]-").lower()
