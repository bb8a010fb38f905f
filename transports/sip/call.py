"""One SIP call mapped onto one session, like ``transports/twilio.py`` maps a media stream.

The caller's RTP audio (8 kHz G.711 or 16 kHz G.722, ``codec.py``) goes to
:meth:`Session.append_audio`, their keypad digits (RFC 4733 or SIP INFO) to
:meth:`Session.dtmf`. Session events become RTP: each reply's audio is queued on the call's
:class:`~.media.RtpMedia`, which paces it out at 20 ms; every
``HEARD_EVERY_MS`` of reply audio a mark rides with the frame, and when that frame has been sent
the session learns what the caller has heard (``Session.heard``), which is what a barge-in keeps
of the reply. A cancelled reply drops the queued frames at once. Keys pressed on our side
(:meth:`SipCall.send_digits`: the call-control API, the ``press_keys`` tool through
``Session.send_digits``) go out as RFC 4733 events. The session's lifecycle is
:class:`~transports.runner.SessionRunner`'s; the call ends when the peer hangs up (BYE, or no
RTP for ``rtp_timeout`` seconds) or the session closes (the agent hangs up: the SIP agent then
sends BYE).

Speakerphone echo: with an :class:`~pipeline.echo.EchoCanceller` (``sip.echo_cancellation``),
each 20 ms of the agent's audio is its reference the moment its RTP packet leaves, and the
caller's decoded audio goes through it before the session hears it, so the agent's own voice
coming back does not cut it off; ``sip.echo_gate_db`` mutes what the canceller leaves of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import numpy as np

from pipeline import messages as m
from pipeline.audio import resample
from pipeline.echo import EchoCanceller
from pipeline.errors import LimitExceeded, ProtocolError, ToolError
from pipeline.session import Session

from ..runner import SessionRunner
from .dialog import Dialog
from .media import Mark, RtpMedia
from .message import SipError

log = logging.getLogger("voice.transport.sip")
HEARD_EVERY_MS = 200
MAX_DTMF_KEPT = 256


class SipCall:
    """A confirmed (or being confirmed) dialog, its RTP and its session."""

    def __init__(
        self,
        dialog: Dialog,
        session: Session,
        media: RtpMedia,
        *,
        peer: str,
        echo_cancellation: bool = False,
        echo_gate_db: float = 0.0,
    ) -> None:
        session.settings.output_rate = media.rate
        session.settings.wire_format = media.media.format.wire_format
        self.dialog = dialog
        self.session = session
        self.media = media
        self.peer = peer
        self.dtmf: deque[str] = deque(maxlen=MAX_DTMF_KEPT)
        self.dropped_audio = 0
        self.hangup_reason: str | None = None
        """Why the peer ended the call (BYE, CANCEL, no RTP), once it has."""
        self._peer_left = asyncio.Event()
        self._playing: str | None = None
        self._sent_ms = 0
        self._next_mark = HEARD_EVERY_MS
        self.log = logging.LoggerAdapter(log, {"session": session.id})
        media.on_audio, media.on_dtmf, media.on_sent = self.audio, self.digit, self.sent
        media.clock = session.clock  # (the RTP pacing and the echo canceller's time line)
        self._echo_gate_db = echo_gate_db
        self.echo = self._canceller(media.rate) if echo_cancellation else None
        if self.echo is not None:
            media.on_frame = self.played
        session.send_digits = self._press_keys
        media.held = session.reply_held  # (what was queued ahead waits while the agent is held)

    # ------------------------------------------------------------------ peer → session

    def audio(self, frame: np.ndarray, wire: bytes | None = None) -> None:
        """A frame of the caller's audio; ``wire``: the G.711 bytes it came as (None for a
        concealed loss), which a remote engine may relay untouched (as for Twilio, the bytes
        are the line as it is: the echo canceller cleans only what this server hears)."""
        rate = self.media.rate
        if self.echo is not None:  # (then the frame is not what the caller said)
            if self.echo.rate != rate:  # (a re-INVITE changed the codec's rate)
                self.echo = self._canceller(rate)
            frame = self.echo.near_end(frame, self.session.clock.now())
        fmt = self.media.media.format.wire_format
        if not fmt or fmt != self.session.settings.wire_format:
            wire = None  # (G.722, or a re-INVITE changed the codec: not what was agreed)
        try:
            self.session.append_audio(frame, rate, wire=wire)
        except LimitExceeded:
            self.dropped_audio += 1

    def _canceller(self, rate: int) -> EchoCanceller:
        margin = self._echo_gate_db or None
        return EchoCanceller(rate, suppress_margin_db=margin, session_id=self.session.id)

    def digit(self, digit: str) -> None:
        self.dtmf.append(digit)
        self.log.info("call %s: DTMF digit %s", self.dialog.call_id, digit)
        try:
            self.session.dtmf(digit)
        except ProtocolError as exc:
            self.log.warning("call %s: DTMF %r refused: %s", self.dialog.call_id, digit, exc)

    def played(self, frame: np.ndarray) -> None:
        """A frame of the agent's audio left as RTP: the echo canceller's reference."""
        assert self.echo is not None
        if self.echo.rate == self.media.rate:
            self.echo.far_end(frame, self.session.clock.now())

    def sent(self, mark: Mark) -> None:
        item_id, ms = mark
        self.session.heard(item_id, ms)

    def peer_hung_up(self, reason: str) -> None:
        """The peer ended the call (BYE, CANCEL): the session ends with ``reason``."""
        if self.hangup_reason is None:
            self.hangup_reason = reason
        self._peer_left.set()

    # ------------------------------------------------------------------ session → peer

    def send_digits(self, digits: str) -> None:
        """Press keypad ``digits`` on the line (RFC 4733 events, in order, from the next 20 ms
        on). Raises :class:`SipError` as :meth:`RtpMedia.send_digits` does."""
        self.media.send_digits(digits)
        self.log.info("call %s: sending DTMF %s", self.dialog.call_id, digits)

    def _press_keys(self, digits: str) -> None:
        """:meth:`send_digits` for the ``press_keys`` tool: failures the model can read."""
        try:
            self.send_digits(digits)
        except SipError as exc:
            raise ToolError(f"cannot press {digits[:40]!r}: {exc}", tool="press_keys") from None

    def render(self, event: m.SessionEvent) -> None:
        """Queue what one session event means for the caller's ear."""
        if isinstance(event, m.ReplyAudio):
            if self._playing != event.response_id:
                self._playing, self._sent_ms, self._next_mark = event.response_id, 0, 0
            rate = self.media.rate
            audio = event.audio if event.rate == rate else resample(event.audio, event.rate, rate)
            self._sent_ms += len(audio) * 1000 // rate
            mark = None
            if self._sent_ms >= self._next_mark:
                self._next_mark = self._sent_ms + HEARD_EVERY_MS
                mark = (event.item_id, self._sent_ms)
            self.media.play(audio, mark)
        elif isinstance(event, m.ReplyDone) and self._playing == event.response_id:
            self._playing = None
            if event.status == "cancelled":
                self.log.info(
                    "call %s: reply %s cut off after %d ms: %d ms of queued audio dropped",
                    self.dialog.call_id,
                    event.response_id,
                    self._sent_ms,
                    self.media.queued_ms,
                )
                self.media.clear()
            elif event.item is not None:
                self.media.flush((event.item.id, self._sent_ms))
        elif isinstance(event, m.SpeechStarted) and self._playing is None and self.media.queued_ms:
            self.media.clear()  # the caller speaks over the tail of a finished reply

    async def serve(self, *, rtp_timeout: float, send_timeout: float = 5.0) -> str:
        """Run the session until either side ends the call; returns why. Cancel-safe."""

        async def deliver(event: m.SessionEvent) -> None:
            self.render(event)

        runner = SessionRunner(
            self.session,
            deliver,
            log=log,
            peer="SIP",
            send_timeout=send_timeout,
            describe=self.describe,
        )
        return await runner.serve(lambda: self._read(rtp_timeout))

    async def _read(self, rtp_timeout: float) -> str:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            last = self.media.last_received or started
            wait = last + rtp_timeout - loop.time()
            if wait <= 0 and self.media.sending:
                self.hangup_reason = f"no RTP from the peer for {rtp_timeout:g} s"
                return self.hangup_reason
            if wait <= 0:  # a held call may be silent: look again later
                wait = rtp_timeout
            try:
                async with asyncio.timeout(wait):
                    await self._peer_left.wait()
            except TimeoutError:
                continue
            return self.hangup_reason or "the peer hung up"

    def describe(self) -> str:
        r, j = self.media.receiver, self.media.jitter
        return (
            f"call {self.dialog.call_id[:64]} with {self.peer}, codec {self.media.media.codec},"
            f" {self.media.sent_packets} RTP packets sent, {j.lost} lost ({j.concealed} concealed),"
            f" {j.late} late, {r.foreign} from foreign sources, {r.malformed} malformed,"
            f" {r.rtcp} RTCP, DTMF {''.join(self.dtmf)[-64:]!r}"
        )
