"""Twilio Media Streams over a WebSocket (``GET /v1/twilio/media-stream``), on aiohttp.

Point a bidirectional ``<Connect><Stream url="wss://…/v1/twilio/media-stream"/>`` at it. One
stream is one session. The caller's μ-law 8 kHz audio goes to the session; the agent's replies
come back as ``media`` messages of 20 ms (160 bytes of μ-law), at the session's real-time pace.

- After each reply's audio a ``mark`` named after the response id is sent; Twilio echoes it once
  that audio has been played, and the echo is logged with how long after sending it came back.
  While a reply plays, a progress mark follows every ``PROGRESS_MARK_MS`` of its audio: its echo
  tells the session how much the caller has really heard (``Session.heard``), which is what a
  barge-in keeps of the reply. Echoes that a ``clear`` causes are not taken as heard.
- Barge-in: when a reply is cancelled after its audio started, a ``clear`` makes Twilio drop what
  it still buffers. When the caller starts speaking while Twilio still plays the tail of a reply
  that has already ended on the server (its mark not echoed yet), ``clear`` is sent as well. While
  a reply is still running, the session alone decides whether speech is a barge-in (a cough does
  not cut the agent off), and the cancellation brings the ``clear``.
- Speakerphone echo: with an :class:`~pipeline.echo.EchoCanceller` (``twilio.echo_cancellation``,
  on by default), the agent's audio as it is sent is the reference, and the caller's audio has
  the agent's voice taken out before the session (its VAD) hears it.
- DTMF digits are logged, kept (:attr:`TwilioStream.dtmf`) and given to the session
  (``Session.dtmf``: the conversation hears them, a Realtime client watching the call sees
  ``input_audio_buffer.dtmf_event_received``).
- Twilio never reads replies to its messages, so a malformed message is logged, counted and
  skipped; the stream goes on. Messages out of order (anything but ``connected`` before
  ``start``, a second ``start``) end the stream instead, closed with 1002 and the reason: the
  two sides no longer agree on what the stream is.
- On ``start``, ``on_start`` (the server's call control) may hold the stream (:attr:`held`)
  until the call is accepted: the caller's audio is dropped meanwhile.
- ``stop``, a closed socket, a frame over ``max_frame_bytes``, no ``start`` within
  ``start_timeout``, silence on the socket for ``idle_timeout`` (Twilio streams media all call
  long) or a send that cannot complete within ``send_timeout`` end the session.
  The session's lifecycle (run, pump, teardown) is :class:`~transports.runner.SessionRunner`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web

from pipeline import messages as m
from pipeline.echo import EchoCanceller
from pipeline.errors import LimitExceeded, ProtocolError
from pipeline.session import Session

from . import g711
from . import twilio_messages as tw
from .runner import SessionRunner

log = logging.getLogger("voice.transport.twilio")

RATE = tw.SAMPLE_RATE
MAX_FRAME_BYTES = 64 * 1024
"""A Twilio message is a few hundred bytes (160 bytes of audio per ``media``)."""
MAX_DTMF_KEPT = 256
MAX_MARKS_PENDING = 64
PROGRESS_MARK_MS = 200
"""A progress mark after every this much reply audio (Twilio echoes it when played)."""
_PROGRESS = "~"  # progress marks are named "~<item id>~<ms>"; response ids never start so
OUT_OF_ORDER = "out_of_order"
_LOG_FIRST = 5  # malformed messages logged one by one, then every _LOG_EVERY-th
_LOG_EVERY = 100


@dataclass(slots=True)
class _PendingMark:
    sent_at: float
    audio_ms: int


class TwilioStream:
    """One Twilio media stream mapped onto one session; no I/O of its own.

    :meth:`receive` takes Twilio's text frames; :meth:`render` turns session events into the
    frames to send back.
    """

    def __init__(self, session: Session, *, echo_cancellation: bool = False) -> None:
        session.settings.output_rate = RATE
        session.settings.wire_format = "audio/pcmu"  # (a remote engine may take it as is)
        self.session = session
        self.echo = EchoCanceller(RATE, session_id=session.id) if echo_cancellation else None
        """Takes the agent's voice out of the caller's audio (a speakerphone); None: off."""
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.custom_parameters: dict[str, str] = {}
        self.dtmf: deque[str] = deque(maxlen=MAX_DTMF_KEPT)
        self.malformed = 0
        self.dropped_media = 0
        """``media`` messages whose audio the session refused (sent faster than real time)."""
        self.stopped = False
        self.broken: str | None = None
        """Why the stream must end (Twilio sent messages out of order); None: it goes on."""
        self.held = False
        """The call waits to be accepted: the caller's audio and keys are dropped (not an
        error)."""
        self.held_media = 0
        self.on_start: Callable[[TwilioStream], None] | None = None
        """Told once the ``start`` message has set the stream's ids and parameters."""
        self._playing: str | None = None  # response whose audio is being sent
        self._sent_ms = 0  # of that response
        self._marks: dict[str, _PendingMark] = {}  # sent, not echoed yet
        self._progress: set[str] = set()  # progress marks sent, not echoed nor cleared
        self._next_progress_ms = PROGRESS_MARK_MS
        self.log = logging.LoggerAdapter(log, {"session": session.id})

    # ------------------------------------------------------------ Twilio → session

    def receive(self, data: str | bytes) -> None:
        """Handle one frame from Twilio; malformed input is logged and counted, never raised."""
        self.session.heard_from_client()
        try:
            if not isinstance(data, str):
                raise ProtocolError("binary frame: Twilio sends JSON text", code="invalid_frame")
            self._receive(tw.parse(data))
        except LimitExceeded as exc:
            self.dropped_media += 1
            self._complain(self.dropped_media, "caller audio dropped", exc)
        except ProtocolError as exc:
            if exc.code == OUT_OF_ORDER:
                self.broken = f"Twilio protocol error: {exc}"
                self.log.warning("stream %s: %s: closing", self.stream_sid, exc)
                return
            self.malformed += 1
            self._complain(self.malformed, "malformed message skipped", exc)

    def _receive(self, msg: tw.TwilioMessage) -> None:
        if isinstance(msg, tw.Media):
            self._check_sid(msg.stream_sid)
            if msg.track not in (None, "inbound", "inbound_track"):
                return  # bidirectional streams carry the caller only; nothing to do otherwise
            if self.held:
                self.held_media += 1
            elif msg.payload:
                audio = g711.ulaw_decode(msg.payload)
                if self.echo is not None:
                    audio = self.echo.near_end(audio, self.session.clock.now())
                # (the bytes as they came: a remote engine taking G.711 gets them untouched)
                self.session.append_audio(audio, RATE, wire=msg.payload)
        elif isinstance(msg, tw.Mark):
            self._check_sid(msg.stream_sid)
            self._mark_played(msg.name)
        elif isinstance(msg, tw.Dtmf):
            self._check_sid(msg.stream_sid)
            if self.held:
                self.held_media += 1
                return
            self.session.dtmf(msg.digit)  # (a key that does not exist: malformed, skipped)
            self.dtmf.append(msg.digit)
            self.log.info("stream %s: DTMF digit %s", self.stream_sid, msg.digit)
        elif isinstance(msg, tw.Start):
            if self.stream_sid is not None:
                raise ProtocolError(
                    f"stream {self.stream_sid} has already started", code=OUT_OF_ORDER
                )
            self.stream_sid, self.call_sid = msg.stream_sid, msg.call_sid
            self.custom_parameters = msg.custom_parameters
            self.log.info(
                "stream %s started: call %s, tracks %s, parameters %s",
                msg.stream_sid,
                msg.call_sid,
                ",".join(msg.tracks) or "-",
                json.dumps(msg.custom_parameters)[:512],
            )
            if self.on_start is not None:
                self.on_start(self)
        elif isinstance(msg, tw.Stop):
            self._check_sid(msg.stream_sid)
            self.stopped = True
            self.log.info("stream %s stopped by Twilio", self.stream_sid)
        else:  # Connected
            self.log.debug("Twilio connected (protocol %s %s)", msg.protocol, msg.version)

    def _check_sid(self, stream_sid: str) -> None:
        if self.stream_sid is None:
            raise ProtocolError("message before the stream's start", code=OUT_OF_ORDER)
        if stream_sid != self.stream_sid:
            raise ProtocolError(
                f"streamSid {stream_sid[:64]!r} is not this stream's ({self.stream_sid})",
                code="invalid_field",
                param="streamSid",
            )

    def _mark_played(self, name: str) -> None:
        if name.startswith(_PROGRESS):
            if name in self._progress:  # (not echoed because of a clear)
                self._progress.discard(name)
                _, item_id, ms = name.split(_PROGRESS)
                self.session.heard(item_id, int(ms))
            return
        pending = self._marks.pop(name, None)
        if pending is None:  # a mark echoed because of a clear, or not ours
            self.log.debug("stream %s: echo of mark %r", self.stream_sid, name[:64])
            return
        self.log.info(
            "stream %s: reply %s played to its end (%d ms of audio; mark echoed %.0f ms after"
            " it was sent)",
            self.stream_sid,
            name,
            pending.audio_ms,
            (self.session.clock.now() - pending.sent_at) * 1000.0,
        )

    def _complain(self, count: int, what: str, exc: ProtocolError) -> None:
        if count <= _LOG_FIRST or count % _LOG_EVERY == 0:
            self.log.warning(
                "stream %s: %s (%s: %s); %d so far", self.stream_sid, what, exc.code, exc, count
            )

    def describe(self) -> str:
        """This stream's facts for the log line that ends the session."""
        return (
            f"stream {self.stream_sid}, call {self.call_sid}, {self.malformed} malformed messages,"
            f" {self.dropped_media} media messages dropped ({self.held_media} while held),"
            f" DTMF {''.join(self.dtmf)[-64:]!r}"
        )

    # ------------------------------------------------------------ session → Twilio

    def render(self, event: m.SessionEvent) -> list[str]:
        """The frames that tell Twilio about one session event (most events: none)."""
        sid = self.stream_sid
        if sid is None:
            return []
        if isinstance(event, m.ReplyAudio):
            if self._playing != event.response_id:
                self._playing, self._sent_ms = event.response_id, 0
                self._next_progress_ms = PROGRESS_MARK_MS
            self._sent_ms += len(event.audio) * 1000 // RATE
            if self.echo is not None:
                self.echo.far_end(event.audio, self.session.clock.now())
            frames = [tw.media(sid, g711.ulaw_encode(event.audio))]
            if self._sent_ms >= self._next_progress_ms and len(self._progress) < MAX_MARKS_PENDING:
                self._next_progress_ms += PROGRESS_MARK_MS
                name = f"{_PROGRESS}{event.item_id}{_PROGRESS}{self._sent_ms}"
                self._progress.add(name)
                frames.append(tw.mark(sid, name))
            return frames
        if isinstance(event, m.ReplyDone) and self._playing == event.response_id:
            self._playing = None
            if event.status == "cancelled":
                self.log.info(
                    "stream %s: reply %s cut off after %d ms sent: clear",
                    sid,
                    event.response_id,
                    self._sent_ms,
                )
                self._marks.clear()  # Twilio echoes them on clear; nothing of them plays
                self._progress.clear()
                return [tw.clear(sid)]
            if len(self._marks) >= MAX_MARKS_PENDING:  # Twilio never echoes: forget the oldest
                del self._marks[next(iter(self._marks))]
            self._marks[event.response_id] = _PendingMark(self.session.clock.now(), self._sent_ms)
            return [tw.mark(sid, event.response_id)]
        if isinstance(event, m.SpeechStarted) and self._playing is None and self._marks:
            self.log.info(
                "stream %s: caller speaks over the end of reply %s: clear",
                sid,
                ", ".join(self._marks),
            )
            self._marks.clear()
            self._progress.clear()
            return [tw.clear(sid)]
        return []


async def serve_twilio(
    request: web.Request,
    open_session: Callable[[], Session],
    *,
    on_start: Callable[[TwilioStream], None] | None = None,
    max_frame_bytes: int = MAX_FRAME_BYTES,
    send_timeout: float = 5.0,
    start_timeout: float = 10.0,
    idle_timeout: float = 30.0,
    echo_cancellation: bool = True,
) -> web.WebSocketResponse:
    """Run one Twilio media stream over the request's WebSocket until either side leaves."""
    ws = web.WebSocketResponse(max_msg_size=max_frame_bytes)
    await ws.prepare(request)
    stream = TwilioStream(open_session(), echo_cancellation=echo_cancellation)
    stream.on_start = on_start
    session = stream.session
    log.info("session %s: Twilio media stream from %s connected", session.id, request.remote)

    async def deliver(event: m.SessionEvent) -> None:
        for frame in stream.render(event):
            if ws.closed:  # Twilio has gone: the reader says why
                return
            await ws.send_str(frame)

    runner = SessionRunner(
        session,
        deliver,
        log=log,
        peer="Twilio",
        send_timeout=send_timeout,
        describe=stream.describe,
    )
    try:
        await runner.serve(lambda: _read(ws, stream, start_timeout, idle_timeout))
    finally:
        code = WSCloseCode.INTERNAL_ERROR if session.failed else WSCloseCode.OK
        if stream.broken is not None:
            code = WSCloseCode.PROTOCOL_ERROR
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(send_timeout):
                await ws.close(code=code, message=(session.closed_reason or "").encode()[:120])
    return ws


async def refuse_twilio(
    request: web.Request, reason: str, *, close_timeout: float = 5.0
) -> web.WebSocketResponse:
    """A media stream that arrives while the server takes no new session (at capacity,
    draining): the WebSocket is accepted and closed at once with 1013 (try again later) and
    ``reason`` — Twilio logs the close and its reason — and no session is opened."""
    ws = web.WebSocketResponse(timeout=close_timeout)
    await ws.prepare(request)
    log.warning("Twilio media stream from %s refused: %s", request.remote, reason)
    await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason.encode()[:120])
    return ws


async def _read(
    ws: web.WebSocketResponse, stream: TwilioStream, start_timeout: float, idle_timeout: float
) -> str:
    """Feed Twilio's frames to the stream; returns why the stream ended."""
    loop = asyncio.get_running_loop()
    start_by = loop.time() + start_timeout
    while True:
        waiting_start = stream.stream_sid is None
        wait = min(idle_timeout, start_by - loop.time()) if waiting_start else idle_timeout
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                msg = await ws.receive()
        except TimeoutError:
            if waiting_start and loop.time() >= start_by:
                return f"no start message within {start_timeout:g} s"
            return f"no message from Twilio for {idle_timeout:g} s"
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            stream.receive(msg.data)
            if stream.stopped:
                return "stop received from Twilio"
            if stream.broken is not None:
                return stream.broken
        elif msg.type == WSMsgType.ERROR:
            stream.log.info("WebSocket error: %s", msg.data)
            if getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                return "frame too large"
            return "WebSocket error"
        else:  # CLOSE, CLOSING, CLOSED
            return "Twilio disconnected"
