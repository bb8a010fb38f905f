"""Speakerphone echo on a SIP call: the agent's voice coming back in the caller's RTP must not
cut the agent off, while the caller speaking over that echo still does.

As ``tests/test_echo.py`` does for Twilio, on virtual time with the real Silero VAD and WebRTC's
echo canceller, the agent speaking with espeak-ng's voice. Here the call is a :class:`SipCall`
with its real :class:`RtpMedia` on loopback UDP, paced on the session's virtual clock; the
caller's phone is a UDP socket that plays each RTP packet of the agent as it arrives and sends
its microphone back as 20 ms PCMU packets: that echo, later and quieter, plus what the caller
says. Each step waits for both packets to have arrived, so virtual time is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.engines import Engines
from pipeline.engines.vad_silero import SileroVad
from pipeline.reply import ReplySettings
from pipeline.session import Session, SessionSettings
from transports import g711
from transports.sip import rtp, sdp
from transports.sip.call import SipCall
from transports.sip.dialog import Dialog, State
from transports.sip.media import RtpMedia

from .conftest import espeak
from .fakes import ScriptedAsr, ScriptedLlm
from .test_echo import (
    CALLER_VOICE,
    CHUNK,
    INTERRUPTION,
    RATE,
    STORY,
    InlineSilero,
    Outcome,
    Speakerphone,
    SpokenTts,
    silero,
)

__all__ = ["silero"]  # (the fixture, shared with test_echo.py)
HOST = "127.0.0.1"


class Count:
    """How many of something have happened; :meth:`reach` waits for a number of them."""

    def __init__(self) -> None:
        self.n = 0
        self._changed = asyncio.Event()

    def add(self) -> None:
        self.n += 1
        self._changed.set()

    async def reach(self, n: int) -> None:
        async with asyncio.timeout(10):
            while self.n < n:
                self._changed.clear()
                await self._changed.wait()


class PhoneSocket(asyncio.DatagramProtocol):
    """The caller's end of the RTP: plays each packet of the agent the moment it arrives."""

    def __init__(self, phone: Speakerphone, clock: VirtualClock) -> None:
        self.phone, self.clock = phone, clock
        self.received = Count()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        packet = rtp.RtpPacket.parse(data)
        self.phone.play(g711.ulaw_decode(packet.payload).astype(np.float64), self.clock.now())
        self.received.add()


@contextlib.asynccontextmanager
async def _call_up(
    session: Session,
    phone: Speakerphone,
    clock: VirtualClock,
    events: list[m.SessionEvent],
    *,
    echo_cancellation: bool,
) -> AsyncIterator[tuple[SipCall, asyncio.DatagramTransport, PhoneSocket, Count]]:
    loop = asyncio.get_running_loop()
    socket, protocol = await loop.create_datagram_endpoint(
        lambda: PhoneSocket(phone, clock), local_addr=(HOST, 0)
    )
    media = RtpMedia(
        sdp.Media(0, None),
        socket.get_extra_info("sockname")[:2],
        on_audio=lambda _frame, _wire: None,
        on_dtmf=lambda _: None,
        on_sent=lambda _: None,
    )
    dialog = Dialog(
        "echo-call", "a1", "sip:agent@127.0.0.1", "sip:caller@127.0.0.1", "c1",
        "sip:caller@127.0.0.1", "sip:agent@127.0.0.1", State.CONFIRMED,
    )  # fmt: skip
    call = SipCall(dialog, session, media, peer=HOST, echo_cancellation=echo_cancellation)
    heard = Count()

    def caller_audio(frame: np.ndarray, wire: bytes | None) -> None:
        heard.add()
        call.audio(frame, wire)

    media.on_audio = caller_audio

    async def pump() -> None:
        while True:
            event = await session.next_event()
            events.append(event)
            call.render(event)

    await media.open(HOST)
    tasks = [asyncio.create_task(session.run()), asyncio.create_task(pump())]
    try:
        yield call, socket, protocol, heard
    finally:
        session.close("test over")
        await media.close()
        socket.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _call(
    silero: SileroVad,
    *,
    echo_cancellation: bool,
    delay_ms: int = 200,
    gain_db: float = -12.0,
    speak_at_s: float | None = None,
) -> Outcome:
    """The agent tells a story to a SIP caller on a speakerphone, who says
    :data:`INTERRUPTION` ``speak_at_s`` into it (or nothing)."""
    clock = VirtualClock()
    engines = Engines(
        vad=InlineSilero(silero),
        asr=ScriptedAsr([INTERRUPTION]),
        llm=ScriptedLlm([STORY, "Yes?"]),
        tts=SpokenTts(),
    )
    session = Session(engines, SessionSettings(), reply_settings=ReplySettings(), clock=clock)
    events: list[m.SessionEvent] = []
    phone = Speakerphone(delay_ms, gain_db)
    speech = espeak(INTERRUPTION, RATE, CALLER_VOICE).astype(np.float64)
    speech_from = None if speak_at_s is None else round(speak_at_s * RATE)
    mic = rtp.Packetizer(0)
    up = _call_up(session, phone, clock, events, echo_cancellation=echo_cancellation)
    async with up as (call, socket, played, heard):
        response_id = session.create_response()
        for k in range(int(40 / 0.02)):  # the story is ~12 s; 40 s is a generous bound
            start = k * CHUNK
            said = None
            if speech_from is not None and start + CHUNK > speech_from:
                said = speech[max(start - speech_from, 0) : start - speech_from + CHUNK]
            packet = mic.packet(phone.microphone(start, said))
            socket.sendto(packet.encode(), (HOST, call.media.port))
            await heard.reach(k + 1)
            await clock.advance(0.02)
            await played.received.reach(call.media.sent_packets)
            if any(isinstance(e, m.ReplyDone) and e.response_id == response_id for e in events):
                break
    done = next(
        (e for e in events if isinstance(e, m.ReplyDone) and e.response_id == response_id), None
    )
    return Outcome(done, sum(isinstance(e, m.SpeechStarted) for e in events))


async def test_echo_alone_does_not_interrupt_the_agent(silero: SileroVad) -> None:
    outcome = await _call(silero, echo_cancellation=True, delay_ms=200, gain_db=-12.0)
    assert outcome.done is not None and outcome.done.status == "completed"
    assert outcome.speech_started == 0


async def test_without_echo_cancellation_the_echo_cuts_the_agent_off(silero: SileroVad) -> None:
    """The control: the same echo, nothing taking it out, and the agent interrupts itself."""
    outcome = await _call(silero, echo_cancellation=False)
    assert outcome.done is not None and outcome.done.status == "cancelled"


async def test_speech_over_the_echo_still_interrupts(silero: SileroVad) -> None:
    outcome = await _call(
        silero, echo_cancellation=True, delay_ms=300, gain_db=-20.0, speak_at_s=3.0
    )
    assert outcome.done is not None
    assert (outcome.done.status, outcome.done.reason) == ("cancelled", "turn_detected")
    assert outcome.speech_started >= 1


FIRST = "Paris is the capital of France. It is known for its museums and its cafes."
SECOND = "A spider has eight legs. Insects have six, which is how to tell them apart."


async def test_echo_between_replies_neither_holds_nor_interrupts(silero: SileroVad) -> None:
    """Two replies 1.5 s apart on a speakerphone: the quiet between them is the agent's own
    silence coming back, not a line without echo, so the second reply starts cancelled too
    (it once went out uncancelled for ~200 ms, and the agent held itself on its own voice)."""
    clock = VirtualClock()
    engines = Engines(
        vad=InlineSilero(silero),
        asr=ScriptedAsr([INTERRUPTION]),
        llm=ScriptedLlm([FIRST, SECOND]),
        tts=SpokenTts(),
    )
    session = Session(engines, SessionSettings(), reply_settings=ReplySettings(), clock=clock)
    events: list[m.SessionEvent] = []
    phone = Speakerphone(200, -12.0)
    mic = rtp.Packetizer(0)
    held = 0
    up = _call_up(session, phone, clock, events, echo_cancellation=True)
    async with up as (call, socket, played, heard):
        replies = [session.create_response()]
        next_at = None
        for k in range(int(40 / 0.02)):  # two ~5 s replies; 40 s is a generous bound
            socket.sendto(
                mic.packet(phone.microphone(k * CHUNK, None)).encode(), (HOST, call.media.port)
            )
            await heard.reach(k + 1)
            await clock.advance(0.02)
            await played.received.reach(call.media.sent_packets)
            held += session.reply_held()
            done = {e.response_id for e in events if isinstance(e, m.ReplyDone)}
            if replies[-1] not in done:
                continue
            if len(replies) == 2:
                break
            next_at = next_at or k + 75  # 1.5 s of quiet, then the next reply
            if k >= next_at:
                replies.append(session.create_response())
    statuses = [e.status for e in events if isinstance(e, m.ReplyDone)]
    assert statuses == ["completed", "completed"]
    assert not any(isinstance(e, m.SpeechStarted) for e in events)
    assert held == 0
