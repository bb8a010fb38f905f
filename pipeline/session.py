"""The session core: one conversation, whatever transport carries it.

A transport adapter calls the command methods (``append_audio``, ``commit_audio``,
``create_response`` …; all synchronous, none blocks) and renders what :meth:`Session.next_event`
returns. The session ties two halves together: *listening* (``listening.py``: VAD, turn-taking,
early ASR, the end-of-turn judge, up to "the turn is over") and *replying* (one
:class:`~pipeline.replying.ReplyHandle` per response: LLM → TTS → paced playout, ``reply.py``).
It is the only place that decides "cancel the reply" and what the conversation holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .audio import PIPELINE_RATE, Resampler
from .clock import Clock, MonotonicClock
from .context import ChatMessage, Conversation, Item, new_id
from .dtmf import Keypad
from .engines import Engines, ToolCallDelta
from .errors import EngineError, LimitExceeded, ProtocolError, VoiceError
from .listening import EndedTurn, Listener
from .messages import (
    CallArguments,
    CallDone,
    CallStarted,
    DtmfReceived,
    InputCleared,
    InputCommitted,
    ItemAdded,
    ItemDeleted,
    ItemTruncated,
    ReplyAudio,
    ReplyDone,
    ReplyHeld,
    ReplyStarted,
    ReplyText,
    ResponseInfo,
    SessionClosed,
    SessionError,
    SessionEvent,
    TranscriptionFailed,
    TurnMetrics,
    Usage,
    UserTranscript,
)
from .metrics import Marks, report
from .playout import Playout
from .reply import Reply, ReplySettings, Scripted, Speech
from .replying import ReplyHandle
from .settings import ResponseOptions, SessionLimits, SessionSettings, Tuning
from .tasks import cancel_and_wait
from .tools import ToolContext, ToolError, ToolRegistry

if TYPE_CHECKING:
    from .handoff.base import RemoteEngine

__all__ = ["Observer", "Session", "SessionLimits", "SessionSettings", "Tuning"]

Observer = Callable[["Session", SessionEvent], None]
"""Told of every event the session emits, as it is queued (metrics, a session store). Called
on the event loop; it must not block, and an exception it raises is logged, not propagated."""


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
        tools: ToolRegistry | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.id = session_id or new_id("sess")
        self.observers: list[Observer] = list(observers)
        self.input_taps: list[Callable[[np.ndarray, int], None]] = []
        """Given the caller's audio as received (samples, rate), before the VAD (a recording).
        Called on the event loop; it must not block."""
        self.tools = tools or ToolRegistry()
        """The server's own tools: the model may call them, and the session runs them."""
        self.settings = settings or SessionSettings()
        self.limits = limits or SessionLimits()
        self.reply_settings = reply_settings or ReplySettings()
        self.clock: Clock = clock or MonotonicClock()
        self.tuning = tuning or Tuning()
        self.engines = engines
        self.log = logging.LoggerAdapter(logging.getLogger("voice.session"), {"session": self.id})
        self.conversation = Conversation(self.settings.instructions)
        self.closed_reason: str | None = None
        self.last_input_at: float | None = None
        """Clock time of the client's last message or audio (:meth:`heard_from_client`); None:
        nothing yet. The idle limit (``pipeline.deadlines``) counts from it."""
        self.failed = False
        """True when the session ended because of an error of the server's own."""
        self._events: asyncio.Queue[SessionEvent] = asyncio.Queue(self.limits.max_pending_events)
        self._active: ReplyHandle | None = None
        self._out_of_band: dict[str, ReplyHandle] = {}
        self._tool_runs: dict[asyncio.Task[None], list[Item]] = {}
        self._tool_rounds = 0  # server-tool follow-ups in a row (bounded: no endless loop)
        self._alignments: OrderedDict[str, Playout] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.listener = Listener(
            self,
            engines,
            self.settings,
            limits=self.limits,
            tuning=self.tuning,
            clock=self.clock,
            log=self.log,
            owner_id=self.id,
            emit=self._emit,
            spawn=self._spawn,
        )
        self.keypad = Keypad(
            self.clock,
            report=lambda digit, at: self._emit(DtmfReceived(digit, at)),
            write=self._keypad_item,
            interrupt=self.barge_in,
            spawn=self._spawn,
        )
        """Keypad presses (``Session.dtmf``); its ``settings`` say what they do (``dtmf.py``)."""
        self.engine = "cascade"
        """Who replies: ``cascade`` or a remote engine's name (``pipeline.handoff``)."""
        self.remote: RemoteEngine | None = None
        """The remote engine replying now (None: the cascade)."""
        self.open_remote: Callable[[Session, str], RemoteEngine] | None = None
        """Builds a remote engine by name (``pipeline.handoff.relay.opener``); None: none."""
        self.transfer: Callable[[str], Awaitable[None]] | None = None
        """Set by a transport that can transfer the call (SIP REFER): the ``transfer_call``
        tool's way out (``ToolContext.transfer``); None: the tool refuses."""
        self.send_digits: Callable[[str], None] | None = None
        """Set by a transport that can press keys on the line (SIP, RFC 4733): the
        ``press_keys`` tool's way (``ToolContext.send_digits``); None: tools that need it are
        not offered to the model."""

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Listen until :meth:`close`. Cancel-safe; on exit every child task is cancelled and
        awaited."""
        try:
            await self.listener.run()
        except Exception as exc:  # a bug: say so and end the session, never die silently
            self.log.exception("the session's input task failed")
            self._emit(SessionError(f"internal error: {exc!r}; the session ends", "internal_error"))
            self.failed = True
            self.close(f"internal error: {type(exc).__name__}")
        finally:
            await cancel_and_wait(list(self._tasks))

    def close(self, reason: str) -> None:
        """Stop the session; ``next_event`` then returns a final :class:`SessionClosed`."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self.log.info("session closing: %s", reason)
        for handle in [self._active, *self._out_of_band.values()]:
            if handle is not None:
                handle.cancel("session_closed")
        self.listener.close()
        self.keypad.close()
        if self.remote is not None:
            self.remote.close()
        self._force_emit(SessionClosed(reason))

    async def next_event(self) -> SessionEvent:
        """The next event for the transport. Cancel-safe."""
        return await self._events.get()

    # ---------------------------------------------------------------- commands

    def update(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.conversation.instructions = settings.instructions
        self.listener.update(settings)
        if self.remote is not None and settings.engine == self.engine:
            self.remote.configure()  # (instructions, tools: the upstream is told)
        self.switch_engine(settings.engine)

    def switch_engine(self, name: str) -> None:
        """Reply with ``name`` from now on (``cascade`` or a remote engine); the conversation
        goes on with it. A reply in progress ends (``engine_switched``). Raises
        :class:`ProtocolError` for an engine this server cannot open."""
        if name == self.engine:
            return
        if name != "cascade" and self.open_remote is None:
            raise ProtocolError(
                f"engine {name!r} is not configured on this server",
                code="invalid_value",
                param="session.engine",
            )
        new = None if name == "cascade" else self.open_remote(self, name)  # type: ignore[misc]
        old, self.remote, self.engine = self.remote, new, name
        self.settings.engine = name
        if self._active is not None:
            self._active.cancel("engine_switched")
        if old is not None:
            old.close()
        self.listener.discard_turn()
        if new is not None:
            self._spawn(new.run())
        self.log.info("engine: %s", name)

    async def wait_reply(self) -> None:
        """Until the conversation's reply in progress, if any, has ended. Cancel-safe."""
        active = self._active
        if active is not None and active.task is not None:
            await asyncio.wait([active.task])

    def append_audio(self, samples: np.ndarray, rate: int, wire: bytes | None = None) -> None:
        """Caller audio (int16 mono at ``rate``; ``wire``: the G.711 bytes it was decoded from,
        in ``settings.wire_format``, which a remote engine may relay as is). Raises
        :class:`LimitExceeded` when it arrives faster than the VAD can follow or overflows the
        turn buffer (the audio is dropped)."""
        self.heard_from_client()
        if self.closed_reason is None:
            for tap in self.input_taps:
                tap(samples, rate)
            if self.remote is not None and self.remote.listens:
                self.remote.append(samples, rate, wire)  # the upstream detects the turns
            else:
                self.listener.append(samples, rate)

    def heard_from_client(self) -> None:
        """The client sent something (a message, audio): it is not idle."""
        with contextlib.suppress(RuntimeError):  # no event loop (a synchronous caller)
            self.last_input_at = self.clock.now()

    def commit_audio(self) -> None:
        """Make the buffered audio a user item (manual turns, or forcing a turn end)."""
        self.listener.commit()

    def clear_audio(self) -> None:
        self.listener.clear()
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
            active.cancel("client_cancelled")
        self.conversation.delete(item_id)
        self._alignments.pop(item_id, None)
        self._emit(ItemDeleted(item_id))

    def create_response(self, options: ResponseOptions | None = None) -> str:
        """Start a response; returns its id. An out-of-band one may run beside the
        conversation's (at most ``limits.max_out_of_band``); the conversation has one at most."""
        options = options or ResponseOptions()
        if options.out_of_band:
            if len(self._out_of_band) >= self.limits.max_out_of_band:
                raise LimitExceeded(
                    f"{len(self._out_of_band)} out-of-band responses are running, the limit"
                    f" (limits.max_out_of_band); wait for one to finish",
                    code="too_many_out_of_band_responses",
                )
        elif self._active is not None:
            raise ProtocolError(
                "Conversation already has an active response",
                code="conversation_already_has_active_response",
            )
        return self._start_reply(Marks({"requested": self.clock.now()}), options).response_id

    def cancel_response(self) -> None:
        if self._active is None:
            raise ProtocolError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
            )
        self._active.cancel("client_cancelled")

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
            self._active.cancel("client_cancelled")  # only once the truncation is valid
        item.text = playout.heard_text(audio_end_ms * playout.rate // 1000)
        item.status = "incomplete"
        item.audio_ms = audio_end_ms
        self._emit(ItemTruncated(item_id, content_index, audio_end_ms))

    def dtmf(self, digit: str) -> None:
        """The caller pressed a keypad key (DTMF): reported to the client and, per
        ``keypad.settings``, gathered into a user item that is answered (``dtmf.py``). Raises
        :class:`ProtocolError` (``invalid_dtmf``) for a key that does not exist."""
        self.heard_from_client()
        if self.closed_reason is None:
            self.keypad.press(digit)

    def _keypad_item(self, text: str) -> None:
        if self.closed_reason is not None:
            return
        try:
            self.add_item(Item(new_id("item"), "user", text=text))
        except LimitExceeded as exc:  # the conversation is full: the client is told
            self._emit(SessionError(str(exc), exc.code))
            return
        if self.keypad.settings.respond and self.may_answer(text) and not self.listener.in_turn:
            self._start_reply(Marks({"requested": self.clock.now()}))

    def alignment(self, item_id: str) -> Playout | None:
        """The playout of an assistant item's audio (for truncation); None when unknown or
        forgotten."""
        return self._alignments.get(item_id)

    def heard(self, item_id: str, audio_ms: int) -> None:
        """The transport reports that the caller has heard the first ``audio_ms`` of an
        assistant item's audio (it knows better than the clock): truncation and the text kept
        after a barge-in follow it. Unknown or forgotten items are ignored."""
        playout = self._alignments.get(item_id)
        if playout is not None:
            playout.report_heard(audio_ms * playout.rate // 1000)

    # ---------------------------------------------------------------- listening's hooks

    def hold_reply(self) -> None:
        active = self._active
        if active is not None and active.reply.output_started and not active.reply.playout.paused:
            active.reply.playout.pause()
            self._emit(ReplyHeld(active.response_id, held=True))

    def reply_held(self) -> bool:
        """The agent's voice is held (the caller may be cutting in): a transport that queued
        some of it ahead of real time holds that too."""
        active = self._active
        return active is not None and active.reply.playout.paused

    def resume_reply(self) -> None:
        active = self._active
        if active is not None and active.reply.playout.paused:
            active.reply.playout.resume()
            self._emit(ReplyHeld(active.response_id, held=False))

    def caller_started(self) -> None:
        active = self._active
        if active is not None and not active.reply.output_started:
            active.cancel("turn_detected")  # the caller went on: that reply is stale
        self._tool_rounds = 0

    def barge_in(self) -> None:
        active = self._active
        if active is not None:
            self.log.info("barge-in after %d ms of reply audio", active.reply.playout.played_ms())
            active.cancel("turn_detected")
        for task, calls in self._tool_runs.items():
            if any(self.tools.cancel_on_barge_in(c.name) for c in calls):
                task.cancel()  # (a tool that must finish goes on; its output is kept)

    def may_answer(self, text: str) -> bool:
        return (
            self.settings.create_response
            and bool(text.strip())
            and self._active is None
            and self.closed_reason is None
        )

    def prepare_reply(self, text: str, marks: Marks) -> ReplyHandle:
        return self._start_reply(marks, None, pending_user=text)

    def prompt_with(self, text: str) -> list[ChatMessage]:
        return [*self.conversation.messages(None), ChatMessage("user", text)]

    def replying(self) -> bool:
        return self._active is not None

    def speaking(self) -> bool:
        active = self._active
        return active is not None and active.reply.output_started

    def turn_ended(self, turn: EndedTurn) -> None:
        item = Item(
            turn.item_id, "user", audio=True, audio_ms=len(turn.audio) * 1000 // PIPELINE_RATE
        )
        prev = self.conversation.last_id()
        self.conversation.add(item)
        if self.remote is not None:
            self.remote.commit_turn(turn.audio)  # this server's turn, the upstream's reply
        self._emit(InputCommitted(item.id, prev))
        self._emit(ItemAdded(item, prev, done=True))
        self._spawn(
            self._transcribe_item(
                item,
                turn.audio,
                turn.early,
                respond=turn.respond,
                marks=turn.marks,
                speculation=turn.speculation,
            )
        )

    async def _transcribe_item(
        self,
        item: Item,
        audio: np.ndarray,
        early: asyncio.Task[str] | None,
        *,
        respond: bool,
        marks: Marks | None = None,
        speculation: ReplyHandle | None = None,
    ) -> None:
        marks = marks or Marks()
        failed = False
        try:
            if early is not None:
                text = await early
            else:
                marks.set_once("asr_start", self.clock.now())
                text = await self.listener.transcribe(audio)
        except (EngineError, TimeoutError) as exc:
            self._emit(TranscriptionFailed(item.id, f"transcription failed: {exc}"))
            text, failed = "", True
        item.text = text
        marks.set_once("asr_done", self.clock.now())
        if self.conversation.get(item.id) is not item:
            self.log.info("user (item deleted before its transcript): %r", text[:200])
            if speculation is not None:
                speculation.cancel("item_deleted")
            return
        self.log.info("user: %r", text[:200])
        self._emit(UserTranscript(item.id, text))
        self._forget_oldest()
        answer = respond and self.may_answer(text) and not self.listener.in_turn
        if speculation is not None and not speculation.done and answer:
            self._adopt(speculation)
            return
        if speculation is not None:
            speculation.cancel("turn_detected")
        if answer:  # not while the agent talks, or once the caller already goes on
            self._start_reply(marks, None)
        elif failed and respond and not self.listener.in_turn:
            self._apologize()  # they were not understood

    # ---------------------------------------------------------------- replies

    def _start_reply(
        self,
        marks: Marks,
        options: ResponseOptions | None = None,
        *,
        pending_user: str | None = None,
    ) -> ReplyHandle:
        """Start a reply. With ``pending_user`` (the caller's words before the turn is
        confirmed) it is speculative: silent and outside the conversation until adopted."""
        opts = options or ResponseOptions()
        s = self.settings
        response_id = new_id("resp")
        text_only = s.text_only if opts.text_only is None else opts.text_only
        item = Item(new_id("item"), "assistant", audio=not text_only, status="in_progress")
        rate = s.output_rate
        messages = self.conversation.messages(opts.instructions, opts.input)
        if pending_user is not None:
            messages.append(ChatMessage("user", pending_user))
        generation = replace(opts.generation or s.generation)
        abilities = {"send_digits"} if self.send_digits is not None else set()
        generation.tools = [*generation.tools, *self.tools.specs(abilities)]
        if opts.tool_choice_after_tools and generation.tool_choice not in ("auto", "none"):
            generation.tool_choice = "auto"  # a forced call again would call again, for ever
        info = ResponseInfo(
            out_of_band=opts.out_of_band,
            text_only=text_only,
            metadata=opts.metadata,
            max_output_tokens=generation.max_tokens,
            voice=opts.client_voice,
            scripted=opts.says is not None,
        )

        def on_call(delta: ToolCallDelta) -> None:
            self._on_call(handle, delta)

        remote = self.remote is not None and opts.says is None and not opts.out_of_band
        reply = (self.remote.reply if remote else Reply)(  # type: ignore[union-attr]
            llm=self.engines.llm if opts.says is None else Scripted(opts.says),
            tts=self.engines.tts,
            messages=messages,
            generation=generation,
            settings=self.reply_settings,
            clock=self.clock,
            output_rate=rate,
            on_audio=lambda frame: self._emit(ReplyAudio(response_id, item.id, frame, rate)),
            on_text=lambda delta: self._emit(ReplyText(response_id, item.id, delta)),
            marks=marks,
            gated=pending_user is not None,
            speech=Speech(audio=not text_only, voice=opts.voice or s.voice, speed=s.speed),
            on_call=on_call,
        )
        handle = ReplyHandle(response_id, item, reply, info)
        handle.task = asyncio.get_running_loop().create_task(self._run_reply(handle))
        self._tasks.add(handle.task)
        handle.task.add_done_callback(lambda task: self._reply_task_done(handle, task))
        if pending_user is None:
            self._adopt(handle)
        return handle

    def _adopt(self, handle: ReplyHandle) -> None:
        """The reply becomes the conversation's (or, out of band, the client's): announced,
        recorded, and heard."""
        if handle.reply.gated:
            handle.reply.marks.set_once("speculative", 1.0)
        if handle.out_of_band:
            self._out_of_band[handle.response_id] = handle
        else:
            self.conversation.add(handle.item)
            self._remember_alignment(handle.item.id, handle.reply.playout)
            self._active = handle
        self._emit(ReplyStarted(handle.response_id, handle.item, handle.info))
        handle.adopt()

    def _on_call(self, handle: ReplyHandle, delta: ToolCallDelta) -> None:
        """A piece of a function call the reply makes: its item first, then its arguments."""
        item = handle.calls.get(delta.index)
        if item is None:
            item = Item(
                new_id("item"),
                "assistant",
                type="function_call",
                status="in_progress",
                call_id=delta.call_id,
                name=delta.name,
            )
            handle.calls[delta.index] = item
            if not handle.out_of_band:
                self.conversation.add(item)
            self._emit(CallStarted(handle.response_id, item))
        item.arguments += delta.arguments
        if delta.arguments:
            self._emit(CallArguments(handle.response_id, item.id, item.call_id, delta.arguments))

    async def _run_reply(self, handle: ReplyHandle) -> None:
        status, reason = "completed", None
        try:
            await handle.reply.run()
        except asyncio.CancelledError:
            status, reason = "cancelled", handle.cancel_reason
            raise
        except VoiceError as exc:
            status, reason = "failed", str(exc)
            self.log.warning("reply failed: %s", exc)
            if handle.adopted:
                self._emit(SessionError(f"response failed: {exc}", code="response_failed"))
        finally:
            handle.finish()
            self._finish_reply(handle, status, reason)
            if status == "failed" and _failed_unheard(handle):
                self._apologize()

    def _apologize(self) -> None:
        """Say the fixed apology (``settings.apology``), if the session has one, for a turn left
        unanswered: its reply failed before a sound of it was heard, or the caller's words could
        not be transcribed. Not while another reply is on, nor once the session closes."""
        text = self.settings.apology
        if text and self.closed_reason is None and self._active is None:
            self._start_reply(Marks(), ResponseOptions(says=text))

    def _reply_task_done(self, handle: ReplyHandle, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not handle.done:  # cancelled before it ever ran: its ``finally`` never did
            handle.finish()
            self._finish_reply(handle, "cancelled", handle.cancel_reason)

    def _finish_reply(self, handle: ReplyHandle, status: str, reason: str | None) -> None:
        reply, item = handle.reply, handle.item
        if self._active is handle:
            self._active = None
        self._out_of_band.pop(handle.response_id, None)
        if not handle.adopted:
            self.log.debug("speculative reply %s discarded (%s)", handle.response_id, status)
            return
        end = reply.end
        if status == "completed" and end is not None and end.finish_reason == "length":
            status, reason = "incomplete", "max_output_tokens"
        usage = Usage(end.input_tokens, end.output_tokens) if end is not None else None
        calls = list(handle.calls.values())
        for call in calls:
            call.status = "completed" if status == "completed" else "incomplete"
            self._emit(CallDone(handle.response_id, call))
        done = ReplyDone(handle.response_id, None, status, reason, reply.output_started)
        done.calls, done.usage = calls, usage
        if handle.deleted:
            self.log.info("agent (%s): reply deleted by the client", status)
            self._emit(done)
            self._emit(TurnMetrics(handle.response_id, None, report(reply.marks)))
            return
        if status == "completed":
            item.text, item.status = reply.spoken_text(), "completed"
        else:
            item.text, item.status = reply.heard_text(), "incomplete"
        item.audio_ms = reply.playout.played_ms()
        if not item.text and not reply.output_started and not handle.out_of_band:
            self.conversation.items = [i for i in self.conversation.items if i is not item]
        self.log.info("agent (%s): %r%s", status, item.text[:200], _calls_note(calls))
        self._forget_oldest()
        done.item = item
        self._emit(done)
        self._emit(TurnMetrics(handle.response_id, item.id, report(reply.marks)))
        server_calls = [c for c in calls if c.status == "completed" and c.name in self.tools]
        if server_calls and not handle.out_of_band and self.closed_reason is None:
            task = self._spawn(self._run_tools(server_calls))
            self._tool_runs[task] = server_calls
            task.add_done_callback(lambda t: self._tool_runs.pop(t, None))

    async def _run_tools(self, calls: list[Item]) -> None:
        """Run the server's own tools the model called, add their outputs, and let the model
        answer with them. Cancelled by a barge-in for tools that allow it."""
        context = ToolContext(self.id, end_call=self._end_call, switch_engine=self._tool_switch)
        if self.transfer is not None:
            context = replace(context, transfer=self.transfer)
        if self.send_digits is not None:
            context = replace(context, send_digits=self.send_digits)
        for call in calls:
            try:
                output = await self.tools.run(call.name, call.arguments, context, clock=self.clock)
            except ToolError as exc:
                output = exc.output()
            except asyncio.CancelledError:
                self._add_output(call, json.dumps({"error": "the caller interrupted"}))
                raise
            self._add_output(call, output)
        self._tool_rounds += 1
        if self._active is None and self.closed_reason is None and not self.listener.in_turn:
            if self._tool_rounds > self.limits.max_tool_rounds:
                self.log.warning("%d tool rounds in a row: not asking again", self._tool_rounds)
                return
            options = ResponseOptions(tool_choice_after_tools=True)
            self._start_reply(Marks({"requested": self.clock.now()}), options)

    def _add_output(self, call: Item, output: str) -> None:
        item = Item(
            new_id("item"), "tool", type="function_call_output", call_id=call.call_id, text=output
        )
        prev = self.conversation.add(item)
        self.log.info("tool %s -> %r", call.name, output[:200])
        self._emit(ItemAdded(item, prev, done=True))

    def _tool_switch(self, engine: str) -> None:
        """A tool hands the conversation to ``engine``: the follow-up reply is its."""
        try:
            self.switch_engine(engine)
        except ProtocolError as exc:
            raise ToolError(str(exc), tool="hand_off") from None

    def _end_call(self, reason: str) -> None:
        """A tool ends the call (once the reply that asked for it has been heard)."""
        self.close(f"the agent ended the call{': ' + reason if reason else ''}")

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
        self._observe(event)
        try:
            self._events.put_nowait(event)
        except asyncio.QueueFull:
            self.close("client is not reading: too many events pending")

    def _force_emit(self, event: SessionEvent) -> None:
        self._observe(event)
        while True:
            try:
                self._events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self._events.get_nowait()

    def _observe(self, event: SessionEvent) -> None:
        for observer in self.observers:
            try:
                observer(self, event)
            except Exception:  # an observer's bug must not end the conversation
                self.log.exception("session observer %r failed", observer)

    @property
    def pending_events(self) -> int:
        """Events queued for the transport, not yet taken (at most ``max_pending_events``)."""
        return self._events.qsize()


def _failed_unheard(handle: ReplyHandle) -> bool:
    """A spoken reply of the conversation's that failed before a sound of it was heard (and was
    not itself the apology)."""
    reply = handle.reply
    scripted = handle.info.scripted or handle.out_of_band
    return handle.adopted and reply.audio and not reply.output_started and not scripted


def _calls_note(calls: list[Item]) -> str:
    return "".join(f" + {c.name}({c.arguments[:120]})" for c in calls)
