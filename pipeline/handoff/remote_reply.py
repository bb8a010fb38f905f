"""One upstream response played like a cascade reply (:class:`RemoteReply`), fed by the
relay (``relay.py``) with the upstream's events of that response."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import Resampler
from ..clock import Clock, timeout
from ..engines import FinishReason, StreamEnd, ToolCallDelta
from ..metrics import Marks
from ..playout import Playout, Segment
from .base import AudioDelta, CallDelta, Interrupted, ResponseDone, TextDelta, UpstreamFailure

if TYPE_CHECKING:
    from ..reply import ReplySettings
    from .relay import Relay


class _Failed:
    __slots__ = ("failure",)

    def __init__(self, failure: UpstreamFailure) -> None:
        self.failure = failure


_Fed = AudioDelta | TextDelta | CallDelta | Interrupted | ResponseDone | _Failed | None


class RemoteReply:
    """One upstream response, played like a cascade reply: its audio paced by a
    :class:`Playout` (which knows what was heard), its words sent as their audio starts, its
    function calls reported to the session. The surface is :class:`pipeline.reply.Reply`'s."""

    def __init__(
        self,
        relay: Relay,
        *,
        instructions: str | None,
        settings: ReplySettings,
        clock: Clock,
        output_rate: int,
        on_audio: Callable[[np.ndarray], None],
        on_text: Callable[[str], None],
        marks: Marks,
        gated: bool,
        audio: bool,
        on_call: Callable[[ToolCallDelta], None] | None,
    ) -> None:
        self._relay = relay
        self.instructions = instructions
        self.tool_choice: str | None = None
        self._clock = clock
        self._on_audio = on_audio
        self._on_text = on_text
        self._on_call = on_call
        self._audio = audio
        self.marks = marks
        self._gate: asyncio.Event | None = asyncio.Event() if gated else None
        self._events: deque[_Fed] = deque()
        self._progress = asyncio.Event()  # for the watch: the upstream said something
        self._arrived = asyncio.Event()  # for the player: an event waits
        self._limit = relay.settings.max_queued_events
        self._resampler = Resampler(relay.codec.output_rate, output_rate)
        self._names: dict[int, tuple[str, str]] = {}
        self.response_id: str | None = None
        self.upstream_item = ""
        """The upstream's id of the assistant message (what a truncation names)."""
        self.heard_ms: int | None = None
        """What the client said it heard (its own ``conversation.item.truncate``); None: the
        playout's position stands."""
        self.upstream_done = False
        self.cancelled = False
        self.finished = asyncio.Event()
        self.text_sent = ""
        self._pending_text = ""
        self._texts: list[str] = []
        self.end: StreamEnd | None = None
        self.playout = Playout(
            clock,
            self._emit,
            rate=output_rate,
            frame_ms=settings.frame_ms,
            lead_ms=settings.lead_ms,
        )

    # Reply's surface

    @property
    def gated(self) -> bool:
        return self._gate is not None

    @property
    def output_started(self) -> bool:
        return self.playout.sent_samples > 0

    @property
    def audio(self) -> bool:
        return self._audio

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self.marks.set_once("released", self._clock.now())

    def interrupt(self) -> None:
        self.playout.stop()

    def heard_text(self) -> str:
        return self.playout.heard_text() if self._audio else self.text_sent.strip()

    def spoken_text(self) -> str:
        if not self._audio:
            return self.text_sent.strip()
        return self.playout.heard_text(self.playout.sent_samples)

    async def run(self) -> None:
        """Ask for the response (unless the upstream started it), then play it. Cancel-safe:
        a cancelled reply is cancelled upstream and cut to what was heard. Raises
        :class:`UpstreamFailure` when the upstream fails or stalls."""
        try:
            await self._run()
        except asyncio.CancelledError:
            self.cancelled = True
            self._relay.stopped(self)
            raise
        finally:
            self.finished.set()

    async def _run(self) -> None:
        if self._gate is not None:
            await self._gate.wait()
        if self.response_id is None:
            self.marks.set_once("llm_start", self._clock.now())
            self._relay.request(self)
        try:
            async with asyncio.TaskGroup() as tg:
                watch = tg.create_task(self._watch())
                await self._play()
                watch.cancel()
        except BaseExceptionGroup as group:
            failure = first_error(group)
            if isinstance(failure, UpstreamFailure):
                self._relay.fail(failure)  # a stalled upstream is a failed one
                self.playout.growing = False  # no more audio will come: what came said it all
            raise failure from None

    # fed by the relay

    def feed(self, event: _Fed) -> None:
        """An upstream event of this response (None: the response exists)."""
        if len(self._events) >= self._limit and not isinstance(event, _Failed | ResponseDone):
            event = _Failed(
                UpstreamFailure(
                    f"more than {self._limit} upstream events wait to be played"
                    " (max_queued_events)",
                    engine=self._relay.name,
                )
            )
        if isinstance(event, ResponseDone):
            self.upstream_done = True
        self._events.append(event)
        self._progress.set()
        self._arrived.set()

    def fail(self, failure: UpstreamFailure) -> None:
        self._events.append(_Failed(failure))
        self._progress.set()
        self._arrived.set()

    # inside

    async def _watch(self) -> None:
        """The upstream's pace: its first event within ``first_audio_timeout_s`` of asking,
        then no gap longer than ``gap_timeout_s``, until the response is done."""
        s = self._relay.settings
        first = True
        while not self.upstream_done:
            limit = s.first_audio_timeout_s if first else s.gap_timeout_s
            try:
                async with timeout(self._clock, limit):
                    await self._progress.wait()
            except TimeoutError:
                what = "first_audio_timeout_s" if first else "gap_timeout_s"
                raise UpstreamFailure(
                    f"the upstream said nothing for {limit:g} s ({what})", engine=self._relay.name
                ) from None
            self._progress.clear()
            first = first and self.response_id is None

    async def _play(self) -> None:
        while True:
            while not self._events:
                self._arrived.clear()
                await self._arrived.wait()
            event = self._events.popleft()
            if isinstance(event, _Failed):
                raise event.failure
            if isinstance(event, ResponseDone):
                await self._finish(event)
                return
            if isinstance(event, AudioDelta):
                await self._play_audio(event)
            elif isinstance(event, TextDelta):
                self._text(event)
            elif isinstance(event, CallDelta):
                self._call(event)
            elif isinstance(event, Interrupted):
                self.playout.stop()

    def _text(self, event: TextDelta) -> None:
        self.marks.set_once("llm_first_token", self._clock.now())
        if self._audio:
            self._pending_text += event.delta
            return
        self.text_sent += event.delta
        self._on_text(event.delta)

    async def _play_audio(self, event: AudioDelta) -> None:
        now = self._clock.now()
        self.marks.set_once("llm_first_token", now)
        self.marks.set_once("tts_first_audio", now)
        self.upstream_item = self.upstream_item or event.item_id
        if not self._audio or self.playout.stopped:
            return
        audio = self._resampler.process(event.audio)
        text, self._pending_text = self._pending_text, ""
        if text:
            self._on_text(text)
        self.playout.growing = True  # until the response is done, more audio may say it
        await self.playout.play(Segment(text, audio))

    def _call(self, event: CallDelta) -> None:
        self.marks.set_once("llm_first_token", self._clock.now())
        call_id, name = self._names.setdefault(event.index, (event.call_id, event.name))
        if self._on_call is not None:
            self._on_call(ToolCallDelta(event.index, call_id, name, event.arguments))

    async def _finish(self, event: ResponseDone) -> None:
        if event.status == "failed":
            raise UpstreamFailure(
                f"the upstream's response failed ({event.reason or 'no reason given'})",
                engine=self._relay.name,
            )
        reason: FinishReason = "length" if event.reason == "max_output_tokens" else "stop"
        self.end = StreamEnd(reason, event.input_tokens, event.output_tokens)
        if self._audio and not self.playout.stopped:
            rest = self._resampler.flush()
            text, self._pending_text = self._pending_text, ""
            if text:
                self._on_text(text)
            self.playout.growing = False  # every segment is whole now
            await self.playout.play(Segment(text, rest))
            await self.playout.drain()

    def _emit(self, frame: np.ndarray) -> None:
        self.marks.set_once("first_audio_sent", self._clock.now())
        self._on_audio(frame)


def first_error(group: BaseExceptionGroup[Any]) -> Any:
    exc = group.exceptions[0]
    return first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
