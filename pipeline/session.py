"""The session core: one conversation, whatever transport carries it.

A transport adapter calls the command methods (``append_audio``, ``commit_audio``,
``create_response`` …; all synchronous, none blocks) and renders what :meth:`Session.next_event`
returns. Inside, one input task scores caller audio with the VAD and feeds the turn detector;
turn ends start a *turn task* (ASR, then a reply); a reply is one cancellable task
(``reply.py``). The session is the only place that decides "the caller is speaking", "the turn
is over" and "cancel the reply".
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .audio import PIPELINE_RATE, Resampler
from .clock import Clock, MonotonicClock
from .context import ChatMessage, Conversation, Item, new_id
from .endpointing import EndpointSettings, silence_needed
from .engines import Engines, GenerationOptions
from .errors import EngineError, EngineTimeout, LimitExceeded, ProtocolError, VoiceError
from .input_buffer import InputBuffer
from .messages import (
    InputCleared,
    InputCommitted,
    InterimTranscript,
    ItemAdded,
    ItemDeleted,
    ItemTruncated,
    ReplyAudio,
    ReplyDone,
    ReplyStarted,
    ReplyText,
    SessionClosed,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    TurnMetrics,
    UserTranscript,
)
from .metrics import Marks, report
from .playout import Playout
from .reply import Reply, ReplySettings
from .tasks import cancel_and_wait
from .turns import TurnDetector, TurnEvent, TurnEventKind, TurnSettings

MIN_COMMIT_SAMPLES = PIPELINE_RATE // 10  # OpenAI's rule: at least 100 ms to commit
ASR_TIMEOUT_SPAN_S = 30.0  # ``asr_timeout`` is per this much audio (Whisper's window)


@dataclass(slots=True)
class SessionSettings:
    """What a client may change with ``session.update``."""

    instructions: str = "You are a helpful voice assistant. Answer in one or two short sentences."
    turn_detection: TurnSettings | None = field(default_factory=TurnSettings)
    """None: manual turns (the client commits and asks for responses)."""
    create_response: bool = True
    interrupt_response: bool = True
    output_rate: int = 24_000
    voice: str = "joe"
    generation: GenerationOptions = field(default_factory=GenerationOptions)


@dataclass(slots=True)
class SessionLimits:
    """Bounds of one session; each has a finite default (see the README)."""

    max_pending_events: int = 4096
    """Events waiting for the transport; past it the client is too slow and the session closes."""
    max_pending_input_ms: int = 10_000
    """Caller audio waiting for the VAD; audio beyond it (sent faster than real time) is dropped."""
    max_input_buffer_s: float = 60.0
    """Audio held for one turn; a longer turn is ended there (manual mode: appends are refused)."""
    asr_timeout: float = 30.0
    """Seconds for one transcription of up to ``ASR_TIMEOUT_SPAN_S`` of audio; longer audio
    gets this for each started span (it is transcribed in pieces, in turn with other sessions)."""
    judge_timeout: float = 1.0
    """An end-of-turn judgement later than this is skipped (the words alone decide)."""
    truncation_memory: int = 16
    """Replies whose audio/text alignment is kept for ``conversation.item.truncate``."""
    max_conversation_bytes: int = 1 << 20
    """Text held by the conversation (UTF-8 bytes). A client item that would pass it is refused
    (``conversation_too_large``); past it, the oldest spoken turns are forgotten."""


@dataclass(slots=True)
class Tuning:
    """Latency techniques, each a switch so a benchmark can compare them in one run."""

    early_asr: bool = True
    """Transcribe at the tentative end of speech, before the turn is confirmed."""
    speculative_reply: bool = True
    """Start the LLM and TTS on that transcript; play only once the turn is confirmed."""
    eot_adaptive: bool = True
    """Let the words heard so far set the silence that ends the turn (``endpoint``) instead of
    the fixed ``silence_duration_ms``; needs ``early_asr``."""
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    pause_on_onset: bool = True
    """Hold the agent's audio from the caller's first speech window; cancel the reply once the
    speech lasts ``interrupt_min_speech_ms``, go on if it was a click or a cough."""
    interim_asr_ms: int = 0
    """Streaming ASR: while the caller speaks, transcribe the words so far after every this
    many ms of new speech (0: off), when the recognizer is idle. Each result is sent as an
    ``InterimTranscript`` and put to the end-of-turn judge, which leaves the words' prompt in
    the LLM's cache for the reply."""


@dataclass(slots=True)
class _Active:
    """A reply in flight. A speculative one is not *adopted* (part of the conversation, heard)
    until its turn is confirmed; discarded before that, it leaves no trace."""

    response_id: str
    item: Item
    reply: Reply
    adopted: bool = False
    cancel_reason: str | None = None
    deleted: bool = False
    """The client deleted the item while it was being spoken: the reply ends, and no event
    names the item again."""
    task: asyncio.Task[None] = field(init=False)


@dataclass(slots=True)
class _Turn:
    item_id: str
    start: int  # absolute sample index, prefix padding included
    early: asyncio.Task[str] | None = None
    early_end: int = 0
    interim: asyncio.Task[None] | None = None
    interim_end: int = 0
    marks: Marks | None = None
    speculation: _Active | None = None


class Session:
    def __init__(
        self,
        engines: Engines,
        settings: SessionSettings | None = None,
        *,
        reply_settings: ReplySettings | None = None,
        limits: SessionLimits | None = None,
        clock: Clock | None = None,
        session_id: str | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self.id = session_id or new_id("sess")
        self.settings = settings or SessionSettings()
        self.limits = limits or SessionLimits()
        self.reply_settings = reply_settings or ReplySettings()
        self.clock: Clock = clock or MonotonicClock()
        self.tuning = tuning or Tuning()
        self.engines = engines
        self.log = logging.LoggerAdapter(logging.getLogger("voice.session"), {"session": self.id})
        self.conversation = Conversation(self.settings.instructions)
        self.closed_reason: str | None = None
        self.failed = False
        """True when the session ended because of an error of the server's own."""
        self._events: asyncio.Queue[SessionEvent] = asyncio.Queue(self.limits.max_pending_events)
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
        self._active: _Active | None = None
        self._alignments: OrderedDict[str, Playout] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._turn_handlers: dict[TurnEventKind, Callable[[TurnEvent, TurnSettings], None]] = {
            TurnEventKind.ONSET: self._on_onset,
            TurnEventKind.SPEECH_STARTED: self._on_speech_started,
            TurnEventKind.INTERRUPT: self._on_interrupt,
            TurnEventKind.PAUSED: self._on_paused,
            TurnEventKind.RESUMED: self._on_resumed,
            TurnEventKind.TURN_ENDED: self._on_turn_ended,
        }

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Score caller audio until :meth:`close`. Cancel-safe; on exit every child task is
        cancelled and awaited."""
        try:
            while self.closed_reason is None:
                await self._wake.wait()
                self._wake.clear()
                await self._score_pending()
        except Exception as exc:  # a bug: say so and end the session, never die silently
            self.log.exception("the session's input task failed")
            self._emit(SessionError(f"internal error: {exc!r}; the session ends", "internal_error"))
            self.failed = True
            self.close(f"internal error: {type(exc).__name__}")
        finally:
            await self._stop_children()

    def close(self, reason: str) -> None:
        """Stop the session; ``next_event`` then returns a final :class:`SessionClosed`."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self.log.info("session closing: %s", reason)
        if self._active is not None:
            self._interrupt("session_closed")
        self._wake.set()
        self._force_emit(SessionClosed(reason))

    async def next_event(self) -> SessionEvent:
        """The next event for the transport. Cancel-safe."""
        return await self._events.get()

    # ---------------------------------------------------------------- commands

    def update(self, settings: SessionSettings) -> None:
        old = self.settings
        self.settings = settings
        self.conversation.instructions = settings.instructions
        if settings.turn_detection != old.turn_detection:
            self._detector = self._new_detector()
            self._discard_turn()

    def append_audio(self, samples: np.ndarray, rate: int) -> None:
        """Caller audio (int16 mono at ``rate``). Raises :class:`LimitExceeded` when it arrives
        faster than the VAD can follow or overflows the turn buffer (the audio is dropped)."""
        if self.closed_reason is not None:
            return
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
        limit = self.limits.max_pending_input_ms * PIPELINE_RATE // 1000
        now = self.clock.now()
        lead = max(0.0, self._lead_s - (now - self._lead_at if self._lead_at is not None else 0.0))
        lead += len(pcm) / PIPELINE_RATE
        # two ways to be too fast: ahead of real time (a burst; whatever the VAD's speed), or
        # ahead of the VAD (a VAD slower than real time)
        behind_vad = self._pending_samples + len(pcm) > limit
        if lead * 1000 > self.limits.max_pending_input_ms or behind_vad:
            dropped_ms = len(pcm) * 1000 // PIPELINE_RATE
            raise LimitExceeded(
                "audio is arriving faster than real time: more than"
                f" {self.limits.max_pending_input_ms} ms is waiting; {dropped_ms} ms dropped",
                code="input_audio_rate_exceeded",
            )
        self._lead_s, self._lead_at = lead, now
        self._buffer.append(pcm, now)
        self._pending.append(pcm)
        self._pending_samples += len(pcm)
        self._wake.set()

    def commit_audio(self) -> None:
        """Make the buffered audio a user item (manual turns, or forcing a turn end)."""
        start = self._turn.start if self._turn else self._buffer.start
        if self._buffer.end - start < MIN_COMMIT_SAMPLES:
            raise ProtocolError(
                "buffer too small: expected at least 100 ms of audio",
                code="input_audio_buffer_commit_empty",
            )
        turn = self._turn or _Turn(new_id("item"), start)
        self._turn = None
        self._detector.reset()
        self._commit(turn, self._buffer.end, marks=Marks({"turn_end": self.clock.now()}))

    def clear_audio(self) -> None:
        self._discard_turn()
        self._buffer.clear()
        self._detector.reset()
        self._emit(InputCleared())

    def add_item(self, item: Item, previous_item_id: str | None = None) -> None:
        """A client-created item; user audio items are transcribed before they are final."""
        if previous_item_id is not None and self.conversation.get(previous_item_id) is None:
            raise ProtocolError(
                f"previous_item_id {previous_item_id!r} does not exist",
                code="item_not_found",
                param="previous_item_id",
            )
        if self.conversation.get(item.id) is not None:
            raise ProtocolError(
                f"item {item.id!r} already exists", code="item_already_exists", param="item.id"
            )
        size = self._conversation_bytes() + len(item.text.encode())
        if size > self.limits.max_conversation_bytes:
            raise LimitExceeded(
                f"the conversation would hold {size} bytes of text, more than its limit of"
                f" {self.limits.max_conversation_bytes} (limits.max_conversation_bytes):"
                " delete items or start a new session",
                code="conversation_too_large",
                param="item",
            )
        prev = self.conversation.add(item, previous_item_id)
        self._emit(ItemAdded(item, prev, done=True))

    def add_audio_item(
        self, item: Item, audio: np.ndarray, rate: int, previous: str | None
    ) -> None:
        """A client-created user item with audio, transcribed in the background. Raises
        :class:`LimitExceeded` (nothing added) past ``max_input_buffer_s``, one turn's bound."""
        seconds, limit = len(audio) / rate, self.limits.max_input_buffer_s
        if seconds > limit:
            raise LimitExceeded(
                f"input_audio is {seconds:.1f} s long; an item may hold at most {limit:g} s"
                " (limits.max_input_buffer_s)",
                code="input_audio_too_long",
                param="item.content",
            )
        pcm = Resampler(rate, PIPELINE_RATE).process(audio)
        item.audio, item.audio_ms = True, len(pcm) * 1000 // PIPELINE_RATE
        self.add_item(item, previous)
        self._spawn(self._transcribe_item(item, pcm, None, respond=False))

    def delete_item(self, item_id: str) -> None:
        """Delete an item; deleting the reply being spoken ends that reply (``cancelled``)."""
        if self.conversation.get(item_id) is None:
            raise ProtocolError(
                f"item {item_id!r} does not exist", code="item_not_found", param="item_id"
            )
        active = self._active
        if active is not None and active.item.id == item_id:
            active.deleted = True
            self._interrupt("client_cancelled")
        self.conversation.delete(item_id)
        self._alignments.pop(item_id, None)
        self._emit(ItemDeleted(item_id))

    def create_response(self, instructions: str | None = None) -> None:
        if self._active is not None:
            raise ProtocolError(
                "Conversation already has an active response",
                code="conversation_already_has_active_response",
            )
        self._start_reply(Marks({"requested": self.clock.now()}), instructions)

    def cancel_response(self) -> None:
        if self._active is None:
            raise ProtocolError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
            )
        self._interrupt("client_cancelled")

    def truncate_item(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """Cut an assistant item to the text of its first ``audio_end_ms`` of audio."""
        item = self.conversation.get(item_id)
        if item is None or item.role != "assistant":
            raise ProtocolError(
                f"assistant item {item_id!r} not found", code="item_truncate_invalid_item_id"
            )
        playout = self._alignments.get(item_id)
        if playout is None:
            raise ProtocolError(
                f"item {item_id!r} has no audio to truncate",
                code="item_truncate_no_audio",
                param="item_id",
            )
        total_ms = playout.sent_samples * 1000 // playout.rate
        if audio_end_ms > total_ms:
            raise ProtocolError(
                f"audio_end_ms {audio_end_ms} is beyond the item's audio ({total_ms} ms)",
                code="invalid_value",
                param="audio_end_ms",
            )
        if self._active is not None and self._active.item.id == item_id:
            self._interrupt("client_cancelled")  # only once the truncation is valid
        item.text = playout.heard_text(audio_end_ms * playout.rate // 1000)
        item.status = "incomplete"
        item.audio_ms = audio_end_ms
        self._emit(ItemTruncated(item_id, content_index, audio_end_ms))

    # ---------------------------------------------------------------- input path

    async def _score_pending(self) -> None:
        window = self._vad.window
        while self._pending and self.closed_reason is None:
            data = np.concatenate(self._pending)
            usable = len(data) - len(data) % window
            if usable == 0:
                return
            self._pending = [data[usable:]] if usable < len(data) else []
            self._pending_samples = len(data) - usable
            windows = data[:usable].reshape(-1, window)
            probabilities = await self._vad.probabilities(windows)
            for probability in probabilities:
                self._scored += window
                self._on_window(probability, self._scored)

    def _on_window(self, probability: float, end: int) -> None:
        td = self.settings.turn_detection
        if td is None:
            return
        for event in self._detector.feed(probability, end / PIPELINE_RATE, 512 / PIPELINE_RATE):
            self._on_turn_event(event, td)
        if self._turn is not None and self.tuning.interim_asr_ms > 0:
            self._maybe_interim(self._turn, end)
        if self._turn is None:
            keep = (td.prefix_padding_ms + td.min_speech_ms) * PIPELINE_RATE // 1000 + 1024
            self._buffer.trim_before(end - keep)
        elif self._buffer.end - self._turn.start > self.limits.max_input_buffer_s * PIPELINE_RATE:
            self.log.info("turn longer than %ss: ending it", self.limits.max_input_buffer_s)
            self._detector.reset()
            self._end_turn(end)

    def _on_turn_event(self, event: TurnEvent, td: TurnSettings) -> None:
        active = self._active
        ends = (TurnEventKind.NOISE, TurnEventKind.PAUSED, TurnEventKind.TURN_ENDED)
        if event.kind in ends and active is not None and active.reply.playout.paused:
            active.reply.playout.resume()  # not a real interruption: the agent goes on
        handler = self._turn_handlers.get(event.kind)
        if handler is not None:
            handler(event, td)

    def _on_onset(self, event: TurnEvent, td: TurnSettings) -> None:
        active = self._active
        if active is not None and active.reply.output_started and self._may_duck():
            active.reply.playout.pause()  # hold the agent's voice at the first speech window

    def _on_speech_started(self, event: TurnEvent, td: TurnSettings) -> None:
        start = max(0, int((event.at * 1000 - td.prefix_padding_ms) * PIPELINE_RATE / 1000))
        self._turn = _Turn(new_id("item"), max(start, self._buffer.start))
        self._emit(SpeechStarted(self._turn.item_id, self._turn.start * 1000 // PIPELINE_RATE))
        active = self._active
        if active is not None and not active.reply.output_started:
            self._interrupt("turn_detected")  # the caller went on: that reply is stale

    def _on_interrupt(self, event: TurnEvent, td: TurnSettings) -> None:
        active = self._active
        if active is not None and self.settings.interrupt_response:
            self.log.info("barge-in after %d ms of reply audio", active.reply.playout.played_ms())
            self._interrupt("turn_detected")

    def _on_paused(self, event: TurnEvent, td: TurnSettings) -> None:
        if self._turn is not None and self.tuning.early_asr:
            self._start_early(self._turn, int(event.at * PIPELINE_RATE))

    def _on_resumed(self, event: TurnEvent, td: TurnSettings) -> None:
        if self._turn is not None:
            self._drop_early(self._turn)

    def _on_turn_ended(self, event: TurnEvent, td: TurnSettings) -> None:
        if self._turn is not None:
            self._end_turn(int(event.at * PIPELINE_RATE))

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
            text = await self._transcribe(audio)
        except (EngineError, TimeoutError) as exc:  # the turn's own transcription reports it
            self.log.debug("interim transcription failed: %s", exc)
            return
        if self._turn is not turn or not text.strip() or self.closed_reason is not None:
            return
        self._emit(InterimTranscript(turn.item_id, text))
        if turn.early is None and self.tuning.eot_adaptive:
            await self._judge(text, Marks())  # evaluates the words' prompt ahead of the reply

    def _start_early(self, turn: _Turn, speech_end: int) -> None:
        """The caller paused: transcribe now, and maybe start the reply, while the silence is
        still being judged."""
        end = speech_end + PIPELINE_RATE // 10
        if self.tuning.eot_adaptive:  # hold the turn open until the words say how long to wait
            self._detector.set_silence_target(self.tuning.endpoint.incomplete_ms)  # (not yet due)
        turn.marks = Marks({"speech_end": self._buffer.arrival_of(speech_end - 1)})
        turn.marks.set_once("paused", self.clock.now())
        turn.early = self._spawn(self._early(turn, self._buffer.slice(turn.start, end)))
        turn.early_end = end

    async def _early(self, turn: _Turn, audio: np.ndarray) -> str:
        marks = turn.marks or Marks()
        marks.set_once("asr_start", self.clock.now())
        try:
            text = await self._transcribe(audio)
        except (EngineError, TimeoutError) as exc:
            self._emit(SessionError(f"transcription failed: {exc}", code="asr_failed"))
            return ""
        marks.set_once("asr_done", self.clock.now())
        completion = None
        if self.tuning.eot_adaptive and self._turn is turn:
            completion = await self._judge(text, marks)
        if self._turn is turn and self.closed_reason is None:
            if self.tuning.speculative_reply and self._may_answer(text):
                turn.speculation = self._start_reply(marks, None, pending_user=text)
            td = self.settings.turn_detection
            if self.tuning.eot_adaptive and td is not None:
                target = silence_needed(text, self.tuning.endpoint, completion)
                for event in self._detector.set_silence_target(target):
                    self._on_turn_event(event, td)
        return text

    async def _judge(self, text: str, marks: Marks) -> float | None:
        """The LLM's probability that ``text`` is a finished turn (``None``: unknown). The
        prompt is the one a reply would get, so the reply re-uses its evaluation."""
        judge = self.engines.judge
        if judge is None or not text.strip():
            return None
        messages = [*self.conversation.messages(None), ChatMessage("user", text)]
        marks.set_once("judge_start", self.clock.now())
        try:
            async with asyncio.timeout(self.limits.judge_timeout):
                completion = await judge.end_of_turn(messages)
        except (EngineError, TimeoutError) as exc:
            self.log.warning("end-of-turn judge failed (%s): the words alone decide", exc)
            return None
        marks.set_once("judge_done", self.clock.now())
        self.log.debug("end of turn: p=%s for %r", completion, text)
        return completion

    def _drop_early(self, turn: _Turn) -> None:
        """Speech resumed: the early transcript and any speculative reply are stale."""
        if turn.early is not None:
            turn.early.cancel()
        if turn.speculation is not None:
            turn.speculation.reply.interrupt()
            turn.speculation.task.cancel()
        turn.early, turn.speculation, turn.marks = None, None, None

    def _may_duck(self) -> bool:
        return self.settings.interrupt_response and self.tuning.pause_on_onset

    def _may_answer(self, text: str) -> bool:
        return (
            self.settings.create_response
            and bool(text.strip())
            and self._active is None
            and self.closed_reason is None
        )

    def _end_turn(self, speech_end: int) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        if turn.interim is not None:
            turn.interim.cancel()
        self._emit(SpeechStopped(turn.item_id, speech_end * 1000 // PIPELINE_RATE))
        end = min(speech_end + PIPELINE_RATE // 10, self._buffer.end)
        if turn.marks is None or turn.early_end < end:
            self._drop_early(turn)
            turn.marks = Marks({"speech_end": self._buffer.arrival_of(speech_end - 1)})
        turn.marks.set_once("turn_end", self.clock.now())
        self._commit(turn, end, turn.marks, respond=self.settings.create_response)

    def _commit(self, turn: _Turn, end: int, marks: Marks, respond: bool = False) -> None:
        audio = self._buffer.slice(turn.start, end)
        self._buffer.trim_before(end)
        item = Item(turn.item_id, "user", audio=True, audio_ms=len(audio) * 1000 // PIPELINE_RATE)
        prev = self.conversation.last_id()
        self.conversation.add(item)
        self._emit(InputCommitted(item.id, prev))
        self._emit(ItemAdded(item, prev, done=True))
        early = turn.early if turn.early is not None and turn.early_end >= end else None
        if early is None:
            self._drop_early(turn)
        self._spawn(
            self._transcribe_item(
                item, audio, early, respond=respond, marks=marks, speculation=turn.speculation
            )
        )

    def _discard_turn(self) -> None:
        if self._turn is not None:
            self._drop_early(self._turn)
            if self._turn.interim is not None:
                self._turn.interim.cancel()
        self._turn = None

    async def _transcribe(self, audio: np.ndarray) -> str:
        """The text of ``audio``; raises :class:`EngineError` (:class:`EngineTimeout` past the
        limit). Cancel-safe."""
        spans = max(1, math.ceil(len(audio) / (ASR_TIMEOUT_SPAN_S * PIPELINE_RATE)))
        timeout = self.limits.asr_timeout * spans
        try:
            async with asyncio.timeout(timeout):
                return await self.engines.asr.transcribe(audio, owner=self.id)
        except TimeoutError:
            raise EngineTimeout(
                f"transcription timed out after {timeout:g} s", engine="asr"
            ) from None

    async def _transcribe_item(
        self,
        item: Item,
        audio: np.ndarray,
        early: asyncio.Task[str] | None,
        *,
        respond: bool,
        marks: Marks | None = None,
        speculation: _Active | None = None,
    ) -> None:
        marks = marks or Marks()
        try:
            if early is not None:
                text = await early
            else:
                marks.set_once("asr_start", self.clock.now())
                text = await self._transcribe(audio)
        except (EngineError, TimeoutError) as exc:
            self._emit(SessionError(f"transcription failed: {exc}", code="asr_failed"))
            text = ""
        item.text = text
        marks.set_once("asr_done", self.clock.now())
        if self.conversation.get(item.id) is not item:
            self.log.info("user (item deleted before its transcript): %r", text)
            if speculation is not None:
                speculation.reply.interrupt()
                speculation.task.cancel()
            return
        self.log.info("user: %r", text[:200])
        self._emit(UserTranscript(item.id, text))
        self._forget_oldest()
        answer = respond and self._may_answer(text) and self._turn is None
        if speculation is not None and not speculation.task.done() and answer:
            self._adopt(speculation)
            return
        if speculation is not None:
            speculation.reply.interrupt()
            speculation.task.cancel()
        if answer:  # not while the agent talks, or once the caller already goes on
            self._start_reply(marks, None)

    # ---------------------------------------------------------------- replies

    def _start_reply(
        self, marks: Marks, instructions: str | None, *, pending_user: str | None = None
    ) -> _Active:
        """Start a reply. With ``pending_user`` (the caller's words before the turn is
        confirmed) it is speculative: silent and outside the conversation until adopted."""
        response_id = new_id("resp")
        item = Item(new_id("item"), "assistant", audio=True, status="in_progress")
        rate = self.settings.output_rate
        messages = self.conversation.messages(instructions)
        if pending_user is not None:
            messages.append(ChatMessage("user", pending_user))
        reply = Reply(
            llm=self.engines.llm,
            tts=self.engines.tts,
            messages=messages,
            generation=replace(self.settings.generation),
            settings=self.reply_settings,
            clock=self.clock,
            output_rate=rate,
            on_audio=lambda frame: self._emit(ReplyAudio(response_id, item.id, frame, rate)),
            on_text=lambda delta: self._emit(ReplyText(response_id, item.id, delta)),
            marks=marks,
            gated=pending_user is not None,
        )
        active = _Active(response_id, item, reply)
        active.task = asyncio.get_running_loop().create_task(self._run_reply(active))
        self._tasks.add(active.task)
        active.task.add_done_callback(self._tasks.discard)
        if pending_user is None:
            self._adopt(active)
        return active

    def _adopt(self, active: _Active) -> None:
        """The reply becomes the conversation's: announced, recorded, and heard."""
        active.adopted = True
        if active.reply.gated:
            active.reply.marks.set_once("speculative", 1.0)
        self.conversation.add(active.item)
        self._remember_alignment(active.item.id, active.reply.playout)
        self._emit(ReplyStarted(active.response_id, active.item))
        self._active = active
        active.reply.release()

    async def _run_reply(self, active: _Active) -> None:
        status, reason = "completed", None
        try:
            await active.reply.run()
        except asyncio.CancelledError:
            status, reason = "cancelled", active.cancel_reason
            raise
        except VoiceError as exc:
            status, reason = "failed", str(exc)
            self.log.warning("reply failed: %s", exc)
            if active.adopted:
                self._emit(SessionError(f"response failed: {exc}", code="response_failed"))
        finally:
            self._finish_reply(active, status, reason)

    def _finish_reply(self, active: _Active, status: str, reason: str | None) -> None:
        reply, item = active.reply, active.item
        if self._active is active:
            self._active = None
        if not active.adopted:
            self.log.debug("speculative reply %s discarded (%s)", active.response_id, status)
            return
        if active.deleted:
            self.log.info("agent (%s): reply deleted by the client", status)
            self._emit(ReplyDone(active.response_id, None, status, reason, reply.output_started))
            self._emit(TurnMetrics(active.response_id, None, report(reply.marks)))
            return
        if status == "completed":
            item.text, item.status = reply.spoken_text(), "completed"
        else:
            item.text, item.status = reply.heard_text(), "incomplete"
        item.audio_ms = reply.playout.played_ms()
        self.log.info("agent (%s): %r", status, item.text[:200])
        self._forget_oldest()
        self._emit(ReplyDone(active.response_id, item, status, reason, reply.output_started))
        self._emit(TurnMetrics(active.response_id, item.id, report(reply.marks)))

    def _interrupt(self, reason: str) -> None:
        active = self._active
        if active is None:
            return
        active.cancel_reason = reason
        active.reply.interrupt()
        active.task.cancel()

    def _remember_alignment(self, item_id: str, playout: Playout) -> None:
        self._alignments[item_id] = playout
        while len(self._alignments) > self.limits.truncation_memory:
            self._alignments.popitem(last=False)

    def transcript_summary(self, max_chars: int = 600) -> str:
        """A bounded one-line summary for the logs (the whole transcript is the store's)."""
        items = self.conversation.items
        text = " | ".join(f"{i.role}: {i.text}" for i in items[-6:])
        if len(text) > max_chars:
            text = f"...{text[-max_chars:]}"
        return f"{len(items)} items, {self._conversation_bytes()} bytes; last: {text!r}"

    def _conversation_bytes(self) -> int:
        return sum(len(i.text.encode()) for i in self.conversation.items)

    def _forget_oldest(self) -> None:
        """Keep the conversation within its byte budget: the oldest items go first."""
        items = self.conversation.items
        size = self._conversation_bytes()
        while size > self.limits.max_conversation_bytes and len(items) > 1:
            gone = items.pop(0)
            size -= len(gone.text.encode())
            self._alignments.pop(gone.id, None)
            self.log.info("conversation over its byte budget: forgot item %s", gone.id)

    # ---------------------------------------------------------------- plumbing

    def _new_detector(self) -> TurnDetector:
        return TurnDetector(self.settings.turn_detection or TurnSettings())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.log.error("task failed", exc_info=exc)
            self._emit(SessionError(f"internal error: {exc!r}", "internal_error"))

    def _emit(self, event: SessionEvent) -> None:
        if self.closed_reason is not None and not isinstance(event, ReplyDone | TurnMetrics):
            return
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self.close("client is not reading: too many events pending")

    def _force_emit(self, event: SessionEvent) -> None:
        while True:
            try:
                self._events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()

    async def _stop_children(self) -> None:
        await cancel_and_wait(list(self._tasks))
