"""The relay: one session's connection to a remote realtime model, and its replies.

:class:`Relay` is the session's engine while a remote model replies: it connects (within
``connect_timeout_s``, the upstream's first event included), tells the upstream the session's
instructions, tools and the conversation so far, sends the caller's audio (or, with this
server's turn detection, each ended turn), and maps what comes back onto the session: the
caller's speech and transcript as the session's events, each upstream response as a
:class:`RemoteReply` — the same surface as :class:`pipeline.reply.Reply`, so the session's
reply lifecycle, barge-in, truncation, tool calls and metrics work unchanged.

Faults (unreachable, refused key, dropped connection, malformed messages, a stall past
``first_audio_timeout_s``/``gap_timeout_s``) raise :class:`~.base.UpstreamFailure` in the
replies in flight, give the client an ``error`` event, and then either fall back to the
cascade (which answers the turn left unanswered) or say the notice and end the session
(:class:`~.base.HandoffSettings`). The conversation so far is the session's: nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
import numpy as np

from .. import messages as m
from ..audio import PIPELINE_RATE, Resampler, pcm16_to_bytes
from ..clock import Clock, timeout
from ..context import ChatMessage, Item
from ..engines import GenerationOptions, ToolCallDelta
from ..errors import ProtocolError
from ..metrics import Marks
from ..settings import ResponseOptions
from .base import (
    AudioDelta,
    CallDelta,
    HandoffSettings,
    InputCommitted,
    Interrupted,
    Ready,
    RemoteEngine,
    ResponseDone,
    ResponseStarted,
    Resumption,
    SessionSetup,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    Unknown,
    UpstreamCodec,
    UpstreamError,
    UpstreamEvent,
    UpstreamFailure,
    UpstreamSettings,
    UserTranscript,
)
from .remote_reply import RemoteReply, first_error

if TYPE_CHECKING:
    from ..reply import ReplySettings, Speech
    from ..session import Session

log = logging.getLogger("voice.handoff")

BENIGN_ERRORS = frozenset({"response_cancel_not_active"})
"""Upstream errors that only say a race was lost (a cancel after the response ended)."""
CLOSE_TIMEOUT_S = 2.0
"""Seconds the upstream has to answer our closing handshake."""
MAX_UNKNOWN_REPORTED = 16
"""Kinds of unknown upstream events reported to the client (each once); more are only
dropped, so an upstream cannot flood the client or the memory."""
MAX_RESUMES = 3
"""Resumptions of an upstream session in a row (Gemini's handles), before it counts as failed."""
SENT_MEMORY = 3000
REPLY_MEMORY = 64
"""Replies remembered for a client's later ``conversation.item.truncate`` of one of them."""
"""Appends whose send time is remembered (a minute of 20 ms chunks), to place the upstream's
``audio_end_ms`` on this server's clock."""
COMMIT_CHUNK_S = 0.5
"""An ended turn's audio goes upstream in appends of this much audio."""


class Relay:
    """One session's remote engine (``name``); see the module docstring."""

    def __init__(
        self,
        session: Session,
        name: str,
        codec: UpstreamCodec,
        settings: UpstreamSettings,
        handoff: HandoffSettings,
        *,
        emit: Callable[[m.SessionEvent], None],
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.name = name
        self.codec = codec
        self.settings = settings
        self.handoff = handoff
        self.failure: UpstreamFailure | None = None
        self._session = session
        self._emit = emit
        self._spawn = spawn
        self._clock: Clock = session.clock
        self._log = logging.LoggerAdapter(log, {"session": session.id})
        self._out: asyncio.Queue[str] = asyncio.Queue(settings.max_queued_events)
        self._replies: dict[str, RemoteReply] = {}
        self._waiting: deque[RemoteReply] = deque()
        self._recent: deque[RemoteReply] = deque(maxlen=REPLY_MEMORY)
        """The latest replies: a client's truncation names one by the session's item id."""
        self._offered: str | None = None
        self._early: dict[str, list[UpstreamEvent]] = {}
        """Events of upstream responses not yet taken by the session (see _take)."""
        self._resamplers: dict[tuple[int, int], Resampler] = {}
        self._early_audio: deque[tuple[np.ndarray, int, bytes | None]] = deque(
            maxlen=settings.max_queued_events
        )
        """Caller audio before the upstream is set up (its format not chosen yet): the
        latest, sent once it is."""
        self._sent_samples = 0
        self._sent_at: deque[tuple[int, float]] = deque(maxlen=SENT_MEMORY)
        """(caller samples sent so far, when): the last ``SENT_MEMORY`` appends."""
        self._unknown: set[str] = set()
        self._turn = Marks()
        self._instructions = session.settings.instructions
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._told = False
        self.ready = asyncio.Event()
        """Set once the upstream session exists and knows the conversation."""
        self.resumption: str | None = None
        """The latest session resumption handle the upstream offered (Gemini)."""

    @property
    def listens(self) -> bool:
        return self.settings.turn_detection == "upstream"

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect and relay until :meth:`close` or a failure; a connection the upstream
        drops between replies is resumed (its resumption handle, at most ``MAX_RESUMES``
        times in a row). Cancel-safe."""
        self._task = asyncio.current_task()
        resumes = 0
        while not self._closed:
            failure = await self._connection()
            if not self._resumable(failure) or resumes >= MAX_RESUMES:
                self.fail(failure)
                return
            resumes += 1
            self._log.info("%s dropped (%s): resuming its session", self.name, failure)
            self.ready.clear()
            self._told = False
            with contextlib.suppress(ValueError):
                self._session.observers.remove(self.observe)

    async def _connection(self) -> UpstreamFailure:
        """One connection, until it fails (the failure, translated)."""
        failure = UpstreamFailure("the connection ended", engine=self.name)
        try:
            async with aiohttp.ClientSession() as http:
                ws = await self._connect(http)
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._write(ws))
                        await self._read(ws)
                finally:
                    await ws.close()
        except* UpstreamFailure as group:
            failure = first_error(group)
        except* (aiohttp.ClientError, OSError) as group:  # (a TimeoutError too)
            failure = UpstreamFailure(
                f"connection failed: {first_error(group)!r}", engine=self.name
            )
        return failure

    def _resumable(self, failure: UpstreamFailure) -> bool:
        """A drop between replies, of an upstream that gave a handle to resume with."""
        handle = getattr(self.codec, "resumption_handle", "")
        idle = not self._replies and not self._waiting and not self._early
        return bool(handle) and idle and failure.retryable and self.ready.is_set()

    async def _connect(self, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        limit = self.settings.connect_timeout_s
        deadline = self._clock.now() + limit
        try:
            async with timeout(self._clock, limit):
                ws = await http.ws_connect(
                    self.codec.url(),
                    headers=self.codec.headers(),
                    max_msg_size=self.settings.max_message_bytes,
                    timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
                )
        except TimeoutError:
            raise UpstreamFailure(
                f"no session from {self.codec.url()} within {limit:g} s (connect_timeout_s)",
                engine=self.name,
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc.status in (401, 403)
            what = "the API key was refused" if refused else "the upstream refused the connection"
            raise UpstreamFailure(
                f"{what} (HTTP {exc.status})", engine=self.name, retryable=not refused
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamFailure(
                f"cannot connect to {self.codec.url()}: {exc}", engine=self.name
            ) from None
        try:
            async with timeout(self._clock, max(0.0, deadline - self._clock.now())):
                await self._hello(ws)
        except BaseException as exc:
            await ws.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure(
                    f"no session from {self.codec.url()} within {limit:g} s (connect_timeout_s)",
                    engine=self.name,
                ) from None
            raise
        self._log.info("connected to %s (%s)", self.name, self.codec.url())
        return ws

    async def _hello(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Tell the upstream the session, and wait for its first event."""
        frames = self.codec.setup(self._setup())
        self._told = True  # from now on, what changes is sent (configure, observe)
        early, self._early_audio = self._early_audio, deque()
        for samples, rate, wire in early:  # (queued behind the setup, in the format it chose)
            self.append(samples, rate, wire)
        self._session.observers.append(self.observe)
        for frame in frames:
            await ws.send_str(frame)
        while not self.ready.is_set():
            self._on_message(await ws.receive())

    def _setup(self) -> SessionSetup:
        s = self._session
        return SessionSetup(
            instructions=s.settings.instructions,
            tools=[*s.settings.generation.tools, *s.tools.specs()],
            tool_choice=s.settings.generation.tool_choice,
            history=list(s.conversation.items),
            upstream_vad=self.listens,
            wire_format=s.settings.wire_format,
        )

    def configure(self) -> None:
        if self._told:
            setup = self._setup()
            setup.history = ()
            self._instructions = setup.instructions
            self._send(self.codec.setup(setup))

    def close(self) -> None:
        """Stop relaying (a switch of engine, the session's end); replies in flight fail."""
        if not self._closed:
            self._closed = True
            self._detach(UpstreamFailure("the engine was switched off", engine=self.name))
        self._stop()

    def _stop(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    def fail(self, failure: UpstreamFailure) -> None:
        """The upstream failed: the client is told, replies in flight fail, and the session
        falls back to the cascade or ends after the notice (``HandoffSettings.fallback``)."""
        if self._closed:
            return
        self._closed = True
        self.failure = failure
        self._log.warning("%s failed: %s", self.name, failure)
        self._emit(m.SessionError(f"the {self.name} engine failed: {failure}", "upstream_failed"))
        replies = self._detach(failure)
        self._stop()
        self._spawn(self._after_failure(replies))

    def _detach(self, failure: UpstreamFailure) -> list[RemoteReply]:
        replies = [*self._replies.values(), *self._waiting]
        self._replies.clear()
        self._waiting.clear()
        for reply in replies:
            reply.fail(failure)
        with contextlib.suppress(ValueError):
            self._session.observers.remove(self.observe)
        return replies

    async def _after_failure(self, replies: list[RemoteReply]) -> None:
        for reply in replies:  # (a reply cancelled before it ran never finishes: bounded)
            with contextlib.suppress(TimeoutError):
                async with timeout(self._clock, self.settings.gap_timeout_s):
                    await reply.finished.wait()
        session = self._session
        if session.remote is not self or session.closed_reason is not None:
            return
        if self.handoff.fallback:
            session.switch_engine("cascade")
            if not session.replying() and _unanswered(session.conversation.items):
                session.create_response()
            return
        session.switch_engine("cascade")
        notice = self.handoff.notice
        if notice and not session.replying():
            session.create_response(ResponseOptions(says=notice))
            await session.wait_reply()
        session.close(f"the {self.name} engine failed: {self.failure}")

    # ------------------------------------------------------------ to the upstream

    def append(self, samples: np.ndarray, rate: int, wire: bytes | None = None) -> None:
        """Caller audio (int16 at ``rate``), resampled to the upstream's rate and sent; a
        phone call's G.711 bytes (``wire``) go as they came where the upstream takes them."""
        if not self._told:
            self._early_audio.append((samples, rate, wire))
            return
        frames = None if wire is None else self.codec.wire(wire)
        if wire is not None and frames is not None:
            self._send(frames)
            self._sent_samples += len(wire)  # (G.711: a byte a sample)
            self._sent_at.append((self._sent_samples, self._clock.now()))
            return
        key = (rate, self.codec.input_rate)  # (the latter follows the setup's format)
        resampler = self._resamplers.get(key)
        if resampler is None:
            resampler = self._resamplers[key] = Resampler(rate, self.codec.input_rate)
        pcm = resampler.process(samples)
        if len(pcm):
            self._send(self.codec.audio(pcm16_to_bytes(pcm)))
            self._sent_samples += len(pcm)
            self._sent_at.append((self._sent_samples, self._clock.now()))

    def _sent_when(self, audio_ms: int) -> float | None:
        """When the caller's audio up to ``audio_ms`` (the upstream's input timeline) was
        sent: the speech end the metrics count from, as the cascade's does."""
        sample = audio_ms * self.codec.input_rate // 1000
        for sent, at in self._sent_at:
            if sent >= sample:
                return at
        return None

    def commit_turn(self, audio: np.ndarray) -> None:
        pcm = Resampler(PIPELINE_RATE, self.codec.input_rate).process(audio)
        step = int(COMMIT_CHUNK_S * self.codec.input_rate)
        for start in range(0, len(pcm), step):
            self._send(self.codec.audio(pcm16_to_bytes(pcm[start : start + step])))
        self._send(self.codec.commit())

    def observe(self, session: Session, event: m.SessionEvent) -> None:
        """A session observer: items a client or a tool added join the upstream's
        conversation (what the upstream said itself, it knows)."""
        if isinstance(event, m.ItemAdded) and _carried(event.item):
            self._send(self.codec.add_item(event.item))
        elif isinstance(event, m.ItemTruncated):
            self._truncated(session, event)

    def _truncated(self, session: Session, event: m.ItemTruncated) -> None:
        """A client cut one of the upstream's replies to what it heard (its own
        ``conversation.item.truncate``): the upstream's copy of it is cut the same."""
        playout = session.alignment(event.item_id)
        reply = next((r for r in self._recent if r.playout is playout), None)
        if playout is None or reply is None or not reply.upstream_item:
            return  # not a reply of this upstream (the cascade's, another engine's)
        reply.heard_ms = event.audio_end_ms  # (a cancellation that follows keeps it)
        self._send(self.codec.truncate(reply.upstream_item, event.audio_end_ms))

    def request(self, reply: RemoteReply) -> None:
        """Ask the upstream for a reply: the response's own instructions and tool choice
        where they are not the session's."""
        self._waiting.append(reply)
        instructions, choice = reply.instructions, reply.tool_choice
        session_choice = self._session.settings.generation.tool_choice
        self._send(
            self.codec.respond(
                None if instructions == self._instructions else instructions,
                None if choice in (None, session_choice) else choice,
            )
        )

    def stopped(self, reply: RemoteReply) -> None:
        """A reply was cancelled here (barge-in, the client): the upstream stops it too, and
        keeps only what the caller heard of it."""
        if reply.response_id is None:
            return  # not created yet: cancelled when it is (see _response_started)
        self._replies.pop(reply.response_id, None)
        if not reply.upstream_done:
            self._send(self.codec.cancel(reply.response_id))
        if reply.upstream_item:
            heard = reply.playout.played_ms() if reply.heard_ms is None else reply.heard_ms
            self._send(self.codec.truncate(reply.upstream_item, heard))

    def _send(self, frames: list[str]) -> None:
        if self._closed:
            return
        for frame in frames:
            try:
                self._out.put_nowait(frame)
            except asyncio.QueueFull:
                self.fail(
                    UpstreamFailure(
                        f"{self._out.maxsize} messages wait for the upstream"
                        " (max_queued_events): it is not reading",
                        engine=self.name,
                    )
                )
                return

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await ws.send_str(await self._out.get())

    # ------------------------------------------------------------ from the upstream

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            self._on_message(await ws.receive())

    def _on_message(self, message: aiohttp.WSMessage) -> None:
        if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            for event in self.codec.receive(message.data):
                self._on_event(event)
            return
        if message.type == aiohttp.WSMsgType.ERROR:
            raise UpstreamFailure(f"the connection failed: {message.data}", engine=self.name)
        raise UpstreamFailure(
            f"the upstream closed the connection ({message.data}: {message.extra or 'no reason'})",
            engine=self.name,
        )

    def _on_event(self, event: UpstreamEvent) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _ready(self, event: Ready) -> None:
        self.ready.set()

    def _speech_started(self, event: SpeechStarted) -> None:
        if not self.listens:
            return
        self._turn = Marks()
        self._session.caller_started()
        self._session.barge_in()
        self._emit(m.SpeechStarted(event.item_id, event.audio_start_ms))

    def _speech_stopped(self, event: SpeechStopped) -> None:
        if self.listens:
            ended = self._sent_when(event.audio_end_ms) if event.audio_end_ms else None
            self._turn.set_once("speech_end", ended or self._clock.now())
            self._emit(m.SpeechStopped(event.item_id, event.audio_end_ms))

    def _committed(self, event: InputCommitted) -> None:
        if not self.listens:
            return
        self._turn.set_once("turn_end", self._clock.now())
        conversation = self._session.conversation
        if conversation.get(event.item_id) is not None:
            return
        item = Item(event.item_id, "user", audio=True)
        previous = conversation.last_id()
        conversation.add(item)
        self._emit(m.InputCommitted(item.id, previous))
        self._emit(m.ItemAdded(item, previous, done=True))

    def _transcript(self, event: UserTranscript) -> None:
        item = self._session.conversation.get(event.item_id)
        if not self.listens or item is None:
            return
        self._turn.set_once("asr_done", self._clock.now())
        item.text = event.text
        self._log.info("user (%s): %r", self.name, event.text[:200])
        self._emit(m.UserTranscript(item.id, event.text))

    def _response_started(self, event: ResponseStarted) -> None:
        while self._waiting:
            reply = self._waiting.popleft()
            if not reply.cancelled:
                self._bind(reply, event.response_id)
                return
        # the upstream answers on its own (its turn detection): a reply of the session's,
        # once the reply a barge-in cancelled has ended (its events wait meanwhile)
        self._early[event.response_id] = []
        self._spawn(self._take(event.response_id))

    async def _take(self, response_id: str) -> None:
        await self._session.wait_reply()
        if response_id not in self._early or self._closed:
            return
        self._offered = response_id
        try:
            self._session.create_response()
        except ProtocolError as exc:
            self._log.info("upstream response %s not taken: %s", response_id, exc)
            self._send(self.codec.cancel(response_id))
        finally:
            self._offered = None
            self._early.pop(response_id, None)

    def _bind(self, reply: RemoteReply, response_id: str) -> None:
        reply.response_id = response_id
        self._replies[response_id] = reply
        reply.feed(None)
        for event in self._early.pop(response_id, []):
            self._on_event(event)

    def _to_reply(self, event: AudioDelta | TextDelta | CallDelta | Interrupted) -> None:
        early = self._early.get(event.response_id)
        if early is not None:
            early.append(event)
            return
        reply = self._replies.get(event.response_id)
        if reply is not None:
            reply.feed(event)

    def _response_done(self, event: ResponseDone) -> None:
        early = self._early.get(event.response_id)
        if early is not None:
            early.append(event)
            return
        reply = self._replies.pop(event.response_id, None)
        if reply is not None:
            reply.feed(event)

    def _error(self, event: UpstreamError) -> None:
        if event.code in BENIGN_ERRORS:
            self._log.debug("upstream: %s", event.message)
            return
        self._log.warning("upstream error (%s): %s", event.code, event.message)
        self._emit(m.SessionError(f"{self.name}: {event.message}", "upstream_error"))

    def _unknown_event(self, event: Unknown) -> None:
        if event.kind in self._unknown or len(self._unknown) >= MAX_UNKNOWN_REPORTED:
            return
        self._unknown.add(event.kind)
        self._log.warning("unknown upstream event %r", event.kind[:80])
        self._emit(
            m.SessionError(
                f"{self.name} sent an event this server does not know ({event.kind[:80]!r});"
                " it was ignored",
                "upstream_unknown_event",
            )
        )

    def _resumption(self, event: Resumption) -> None:
        self.resumption = event.handle

    # ------------------------------------------------------------ the session's replies

    def reply(
        self,
        *,
        messages: list[ChatMessage],
        settings: ReplySettings,
        clock: Clock,
        output_rate: int,
        on_audio: Callable[[np.ndarray], None],
        on_text: Callable[[str], None],
        marks: Marks,
        gated: bool = False,
        speech: Speech | None = None,
        on_call: Callable[[ToolCallDelta], None] | None = None,
        generation: GenerationOptions | None = None,
        **_cascade: Any,
    ) -> RemoteReply:
        """The session's reply object (called with :class:`pipeline.reply.Reply`'s keywords;
        the cascade's own — ``llm``, ``tts`` — do not apply; of ``generation`` the tool
        choice does: the upstream has the tools, its own token limit and temperature)."""
        for name, value in self._turn.values.items():
            marks.set_once(name, value)
        reply = RemoteReply(
            self,
            instructions=messages[0].content if messages and messages[0].role == "system" else None,
            settings=settings,
            clock=clock,
            output_rate=output_rate,
            on_audio=on_audio,
            on_text=on_text,
            marks=marks,
            gated=gated,
            audio=speech.audio if speech is not None else True,
            on_call=on_call,
        )
        reply.tool_choice = generation.tool_choice if generation is not None else None
        self._recent.append(reply)
        if self._offered is not None:
            self._bind(reply, self._offered)
        return reply


_HANDLERS: dict[type, Callable[[Relay, Any], None]] = {
    Ready: Relay._ready,
    SpeechStarted: Relay._speech_started,
    SpeechStopped: Relay._speech_stopped,
    InputCommitted: Relay._committed,
    UserTranscript: Relay._transcript,
    ResponseStarted: Relay._response_started,
    AudioDelta: Relay._to_reply,
    TextDelta: Relay._to_reply,
    CallDelta: Relay._to_reply,
    Interrupted: Relay._to_reply,
    ResponseDone: Relay._response_done,
    UpstreamError: Relay._error,
    Unknown: Relay._unknown_event,
    Resumption: Relay._resumption,
}


def _carried(item: Item) -> bool:
    """Whether an item added to the session's conversation is news to the upstream: a
    client's text message or call, or a function call's output (not the caller's audio
    turns, nor the upstream's own replies)."""
    if item.type == "function_call_output":
        return True
    return item.role != "assistant" and not item.audio and item.type == "message"


def _unanswered(items: list[Item]) -> bool:
    """The caller spoke last, a tool answered last, or the last reply was cut short (by the
    failure): the turn still wants a reply."""
    for item in reversed(items):
        if item.type == "function_call_output":
            return True
        if item.type == "message" and item.text.strip():
            return item.role == "user" or item.status == "incomplete"
    return False


def opener(handoff: HandoffSettings) -> Callable[[Session, str], RemoteEngine]:
    """``Session.open_remote`` for these settings: a relay to the named upstream, or a
    :class:`ProtocolError` naming an engine that is not configured."""
    from .gemini_live import GeminiLiveCodec
    from .openai_realtime import OpenAiRealtimeCodec

    codecs: dict[str, Callable[[UpstreamSettings], UpstreamCodec]] = {
        "openai-realtime": OpenAiRealtimeCodec,
        "gemini-live": GeminiLiveCodec,
    }

    def open_remote(session: Session, name: str) -> RemoteEngine:
        upstream = handoff.upstreams.get(name)
        make = codecs.get(name)
        if upstream is None or make is None:
            configured = ", ".join(["cascade", *sorted(handoff.upstreams)])
            raise ProtocolError(
                f"engine {name!r} is not configured on this server (engines: {configured})",
                code="invalid_value",
                param="session.engine",
            )
        return Relay(
            session,
            name,
            make(upstream),
            upstream,
            handoff,
            emit=session._emit,  # (the session lends its own, as to its listener)
            spawn=session._spawn,
        )

    return open_remote
