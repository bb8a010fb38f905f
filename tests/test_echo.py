"""Speakerphone echo: the agent's voice coming back on the phone line must not cut the agent off,
while the caller speaking over that echo still does.

The call is a Twilio media stream (:class:`TwilioStream`, sans-I/O) on a session on virtual
time, with the real Silero VAD (the component the echo would fool; scored inline so that virtual
time is exact) and WebRTC's echo canceller. The agent speaks with espeak-ng's voice (a scripted
LLM, a TTS that speaks the text for real); the caller's phone is a speakerphone: it plays the
agent's ``media`` as Twilio would and its microphone picks that audio up again, later and
quieter, μ-law coded on the way back, plus whatever the caller says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.echo import EchoCanceller, EchoPresence, ResidualEchoGate
from pipeline.engines import Engines
from pipeline.engines.vad_silero import SileroOptions, SileroVad
from pipeline.errors import ConfigError
from pipeline.reply import ReplySettings
from pipeline.session import Session, SessionSettings
from transports import g711
from transports import twilio_messages as tw
from transports.twilio import TwilioStream

from .conftest import espeak
from .fakes import ScriptedAsr, ScriptedLlm

RATE = 8_000
CHUNK = 160  # 20 ms
SID = "MZecho"
STORY = (
    "Once upon a time there was a brave little dragon who lived in a cave high in the"
    " mountains. Every morning he flew over the valley to look for adventures, and every"
    " evening he came home to tell his mother what he had seen."
)
INTERRUPTION = "Stop, wait a moment, I have a question."
AGENT_VOICE = "en-us+m1"
CALLER_VOICE = "en-us+f3"


class InlineSilero:
    """The real Silero model, scored on the event loop instead of its thread, so that a
    window's verdict lands at the virtual instant its audio arrived."""

    window = 512

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(64, dtype=np.float32)

    def stream(self) -> InlineSilero:
        return InlineSilero(self._model)

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        probs, self._state, self._context = self._model.run_windows(
            windows, self._state, self._context
        )
        return probs


class SpokenTts:
    """Speaks each clause with espeak-ng (the agent's voice here): real speech, made at once."""

    sample_rate = 16_000

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        return espeak(text, self.sample_rate, AGENT_VOICE)

    def overdue(self) -> int:
        return 0


@pytest.fixture(scope="module")
def silero() -> SileroVad:
    return SileroVad(SileroOptions())


class Speakerphone:
    """Plays the agent's audio back to back from when it arrives (Twilio's buffer; ``clear``
    drops what has not played) and hears it again ``delay_ms`` later, ``gain_db`` quieter."""

    def __init__(self, delay_ms: int, gain_db: float, seconds: float = 60.0) -> None:
        self.played = np.zeros(int(seconds * RATE))
        self.next_free = 0
        self.delay = delay_ms * RATE // 1000
        self.gain = 10 ** (gain_db / 20)

    def play(self, audio: np.ndarray, now: float) -> None:
        start = max(round(now * RATE), self.next_free)
        self.played[start : start + len(audio)] = audio
        self.next_free = start + len(audio)

    def clear(self, now: float) -> None:
        at = round(now * RATE)
        self.played[at : self.next_free] = 0
        self.next_free = min(self.next_free, at)

    def microphone(self, start: int, speech: np.ndarray | None) -> bytes:
        """μ-law of the 20 ms from sample ``start``: the echo, plus the caller's ``speech``."""
        lo = start - self.delay
        echo = self.played[max(lo, 0) : lo + CHUNK] if lo + CHUNK > 0 else np.zeros(0)
        mic = np.zeros(CHUNK)
        mic[CHUNK - len(echo) :] = echo * self.gain
        if speech is not None:
            mic[: len(speech)] += speech
        return g711.ulaw_encode(np.clip(mic, -32768, 32767).astype(np.int16))


@dataclass(slots=True)
class Outcome:
    done: m.ReplyDone | None
    speech_started: int
    """``SpeechStarted`` events: the VAD took something for the caller's speech."""


@contextlib.asynccontextmanager
async def _running(
    session: Session,
    stream: TwilioStream,
    phone: Speakerphone,
    clock: VirtualClock,
    events: list[m.SessionEvent],
) -> AsyncIterator[None]:
    async def pump() -> None:
        while True:
            event = await session.next_event()
            events.append(event)
            for frame in stream.render(event):
                message = json.loads(frame)
                if message["event"] == "media":
                    ulaw = tw.parse(frame)
                    assert isinstance(ulaw, tw.Media)
                    phone.play(g711.ulaw_decode(ulaw.payload), clock.now())
                elif message["event"] == "clear":
                    phone.clear(clock.now())

    tasks = [asyncio.create_task(session.run()), asyncio.create_task(pump())]
    try:
        yield
    finally:
        session.close("test over")
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
    """The agent tells a story to a caller on a speakerphone, who says :data:`INTERRUPTION`
    ``speak_at_s`` into it (or nothing)."""
    clock = VirtualClock()
    engines = Engines(
        vad=InlineSilero(silero),
        asr=ScriptedAsr([INTERRUPTION]),
        llm=ScriptedLlm([STORY, "Yes?"]),
        tts=SpokenTts(),
    )
    session = Session(engines, SessionSettings(), reply_settings=ReplySettings(), clock=clock)
    stream = TwilioStream(session, echo_cancellation=echo_cancellation)
    stream.receive(
        json.dumps(
            {
                "event": "start",
                "streamSid": SID,
                "start": {
                    "streamSid": SID,
                    "callSid": "CAecho",
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                },
            }
        )
    )
    phone = Speakerphone(delay_ms, gain_db)
    speech = espeak(INTERRUPTION, RATE, CALLER_VOICE).astype(np.float64)
    speech_from = None if speak_at_s is None else round(speak_at_s * RATE)
    events: list[m.SessionEvent] = []
    async with _running(session, stream, phone, clock, events):
        response_id = session.create_response()
        for k in range(int(40 / 0.02)):  # the story is ~12 s; 40 s is a generous bound
            start = k * CHUNK
            said = None
            if speech_from is not None and start + CHUNK > speech_from:
                said = speech[max(start - speech_from, 0) : start - speech_from + CHUNK]
            stream.receive(tw.media(SID, phone.microphone(start, said)))
            await clock.advance(0.02)
            if any(isinstance(e, m.ReplyDone) and e.response_id == response_id for e in events):
                break
    done = next(
        (e for e in events if isinstance(e, m.ReplyDone) and e.response_id == response_id), None
    )
    return Outcome(done, sum(isinstance(e, m.SpeechStarted) for e in events))


@pytest.mark.parametrize(("delay_ms", "gain_db"), [(120, -10.0), (200, -12.0), (300, -20.0)])
async def test_echo_alone_does_not_interrupt_the_agent(
    silero: SileroVad, delay_ms: int, gain_db: float
) -> None:
    outcome = await _call(silero, echo_cancellation=True, delay_ms=delay_ms, gain_db=gain_db)
    assert outcome.done is not None and outcome.done.status == "completed"
    assert outcome.speech_started == 0


async def test_without_echo_cancellation_the_echo_cuts_the_agent_off(silero: SileroVad) -> None:
    """The control: the same echo, nothing taking it out, and the agent interrupts itself."""
    outcome = await _call(silero, echo_cancellation=False)
    assert outcome.done is not None and outcome.done.status == "cancelled"


@pytest.mark.parametrize(("delay_ms", "gain_db"), [(200, -12.0), (300, -20.0)])
async def test_speech_over_the_echo_still_interrupts(
    silero: SileroVad, delay_ms: int, gain_db: float
) -> None:
    outcome = await _call(
        silero, echo_cancellation=True, delay_ms=delay_ms, gain_db=gain_db, speak_at_s=3.0
    )
    assert outcome.done is not None
    assert (outcome.done.status, outcome.done.reason) == ("cancelled", "turn_detected")
    assert outcome.speech_started >= 1


# ---------------------------------------------------------------- the component alone


def _db(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio.astype(np.float64))) + 1e-9))


def test_the_echo_is_removed_and_the_caller_kept() -> None:
    agent = espeak(STORY, RATE, AGENT_VOICE)
    caller = espeak(INTERRUPTION, RATE, CALLER_VOICE)
    echo = np.zeros(len(agent) + 1600)
    echo[1600:] = agent * 10 ** (-12 / 20)  # 200 ms later, 12 dB down
    canceller = EchoCanceller(RATE)
    out = []
    for k in range(0, len(agent) - CHUNK, CHUNK):
        at = k / RATE
        canceller.far_end(agent[k : k + CHUNK], at)
        out.append(canceller.near_end(echo[k : k + CHUNK].astype(np.int16), at + 0.02))
    cleaned = np.concatenate(out)
    settled = slice(2 * RATE, len(cleaned))  # after the first two seconds
    assert _db(echo[: len(cleaned)][settled]) - _db(cleaned[settled]) > 25

    alone = EchoCanceller(RATE)  # no agent audio: the caller passes (high-pass filtered)
    kept = np.concatenate(
        [alone.near_end(caller[k : k + CHUNK], k / RATE) for k in range(0, len(caller), CHUNK)]
    )
    assert abs(_db(kept) - _db(caller[: len(kept)])) < 1.5


def test_no_echo_on_the_line_leaves_the_caller_untouched() -> None:
    """A handset: the agent speaks, nothing of it comes back. Once that is clear (half a
    second of the agent speaking), the caller's audio passes as it came (WebRTC's suppressor,
    not sure yet that there is no echo, would dull the caller's first syllables: a slower
    barge-in)."""
    agent = espeak(STORY, RATE, AGENT_VOICE)
    caller = np.zeros(len(agent), np.int16)
    speech = espeak(INTERRUPTION, RATE, CALLER_VOICE)
    caller[2 * RATE : 2 * RATE + len(speech)] = speech  # over the agent, 2 s in
    canceller = EchoCanceller(RATE)
    out = []
    for k in range(0, len(agent) - CHUNK, CHUNK):
        canceller.far_end(agent[k : k + CHUNK], k / RATE)
        out.append(canceller.near_end(caller[k : k + CHUNK], k / RATE + 0.02))
    assert not canceller.presence.present
    passed = np.concatenate(out)[2 * RATE :]
    assert np.array_equal(passed, caller[2 * RATE : 2 * RATE + len(passed)])


def test_echo_presence_from_the_correlation() -> None:
    rng = np.random.default_rng(7)
    agent = espeak(STORY, RATE, AGENT_VOICE).astype(np.float64)
    echo = np.concatenate([np.zeros(1200), agent])[: len(agent)] * 0.1  # 150 ms, -20 dB
    caller = espeak(INTERRUPTION, RATE, CALLER_VOICE).astype(np.float64)
    noise = rng.normal(0, 30, len(agent))

    def run(mic: np.ndarray) -> EchoPresence:
        presence = EchoPresence(RATE)
        for k in range(0, 3 * RATE, 80):
            presence.add(mic[k : k + 80], agent[k : k + 80])
        return presence

    assert run(echo + noise).present
    assert run(echo + noise).correlation > 0.8
    quiet = run(noise)
    assert not quiet.present and quiet.correlation < 0.15
    talking = np.zeros(len(agent))
    talking[: len(caller)] = caller
    assert not run(talking + noise).present  # the caller's own voice is not an echo
    idle = EchoPresence(RATE)  # the agent silent: nothing to go by, an echo still assumed
    for k in range(0, RATE, 80):
        idle.add(noise[k : k + 80], np.zeros(80))
    assert idle.present and idle.correlation is None


def test_the_agent_falling_silent_is_no_evidence_against_the_echo() -> None:
    """Between two replies the caller's line goes quiet while the agent's last words are still
    in the reference window: that quiet is the agent's own silence coming back, not a line
    without echo. (Taken for one, it let each next reply's first ~200 ms of echo through.)"""
    agent = espeak(STORY, RATE, AGENT_VOICE)[: 3 * RATE].astype(np.float64)
    line = np.concatenate([agent, np.zeros(2 * RATE), agent])  # two replies, 2 s apart
    echo = np.concatenate([np.zeros(1600), line])[: len(line)] * 10 ** (-12 / 20)
    presence = EchoPresence(RATE)
    states = []
    for k in range(0, len(line), 80):
        presence.add(echo[k : k + 80], line[k : k + 80])
        states.append(presence.present)
    assert all(states)
    assert presence.correlation is not None and presence.correlation > 0.8


def test_the_caller_talking_over_the_echo_is_no_evidence_against_it() -> None:
    """Speech over the agent drowns the correlation (the peak falls below ``off``): once an
    echo was found, that is no proof that it went away."""
    agent = espeak(STORY, RATE, AGENT_VOICE)[: 6 * RATE].astype(np.float64)
    caller = espeak(STORY, RATE, CALLER_VOICE)[: 3 * RATE].astype(np.float64)
    mic = np.concatenate([np.zeros(1600), agent])[: len(agent)] * 10 ** (-12 / 20)
    mic[2 * RATE : 5 * RATE] += caller * 2  # 3 s of the caller, loud, over the echo
    presence = EchoPresence(RATE)
    states, peaks = [], []
    for k in range(0, len(agent), 80):
        presence.add(mic[k : k + 80], agent[k : k + 80])
        states.append(presence.present)
        peaks.append(presence.correlation)
    assert min(p for p in peaks[3 * 100 : 5 * 100] if p is not None) < 0.15  # (drowned)
    assert all(states)


def test_the_next_reply_starts_cancelled() -> None:
    agent = espeak(STORY, RATE, AGENT_VOICE)[: 3 * RATE]
    line = np.concatenate([agent, np.zeros(2 * RATE, np.int16), agent])
    echo = np.concatenate([np.zeros(1600), line * 10 ** (-12 / 20)])[: len(line)]
    canceller = EchoCanceller(RATE)
    out = []
    for k in range(0, len(line) - CHUNK, CHUNK):
        canceller.far_end(line[k : k + CHUNK], k / RATE)
        out.append(canceller.near_end(echo[k : k + CHUNK].astype(np.int16), k / RATE + 0.02))
    cleaned = np.concatenate(out)
    second = slice(5 * RATE + 1600, 5 * RATE + 1600 + 4000)  # its echo's first 500 ms
    assert _db(echo[second]) - _db(cleaned[second]) > 20


def test_the_module_rests_while_nothing_of_the_agent_can_come_back() -> None:
    """Past the longest echo delay (and a margin) after the agent's last sound, the caller's
    audio passes as it came and the module is not fed; the echo's tail before that is still
    cancelled, and so is the next reply's echo from its start."""
    agent = espeak(STORY, RATE, AGENT_VOICE)[: 3 * RATE]
    line = np.concatenate([agent, np.zeros(3 * RATE, np.int16), agent])
    echo = np.concatenate([np.zeros(1600), line * 10 ** (-12 / 20)])[: len(line)]  # 200 ms
    speech = espeak(INTERRUPTION, RATE, CALLER_VOICE)[: 2 * RATE]
    mic = echo.copy()
    mic[4 * RATE : 4 * RATE + len(speech)] += speech  # the caller, in the agent's silence
    mic = np.clip(mic, -32768, 32767).astype(np.int16)
    canceller = EchoCanceller(RATE)
    out = []
    for k in range(0, len(line) - CHUNK, CHUNK):
        canceller.far_end(line[k : k + CHUNK], k / RATE)
        out.append(canceller.near_end(mic[k : k + CHUNK], k / RATE + 0.02))
    cleaned = np.concatenate(out)
    rest = 3 * RATE // canceller.frame - 80  # (3 s of silence, less 600 + 200 ms)
    assert abs(canceller.resting - rest) <= 2, canceller.resting
    tail = slice(3 * RATE, 3 * RATE + 1600)  # the echo of the agent's last 200 ms
    assert _db(echo[tail]) - _db(cleaned[tail]) > 15
    said = slice(4 * RATE, 4 * RATE + len(speech))
    assert np.array_equal(cleaned[said], mic[said])
    second = slice(6 * RATE + 1600, 6 * RATE + 1600 + 4000)  # the next reply's first 500 ms
    assert _db(echo[second]) - _db(cleaned[second]) > 20


def test_the_gate_mutes_what_the_echo_alone_explains() -> None:
    """The residual echo gate's decision: 10 ms of the caller against the echo path (delay 200 ms,
    gain 0.25) from the reference's energy around that delay."""
    rng = np.random.default_rng(3)
    gate = ResidualEchoGate(RATE, margin_db=6.0)
    loud, quiet = rng.normal(0, 4000, 80), np.zeros(80)
    for k in range(60):  # the agent: 400 ms loud, then 200 ms silent
        gate.reference(loud if k < 40 else quiet)
    # an echo 200 ms late is just ending: the loudest it could be is 0.25 * 4000 = 1000 RMS
    assert gate.echo_only(rng.normal(0, 900, 80), 1600, 0.25)  # (echo-sized: muted)
    assert not gate.echo_only(rng.normal(0, 3000, 80), 1600, 0.25)  # (louder: the caller)
    assert not gate.echo_only(rng.normal(0, 900, 80), 800, 0.25)  # (100 ms: the agent was quiet)
    assert gate.echo_only(rng.normal(0, 900, 80), 2400, 0.25)  # (300 ms: it was loud)


def test_the_gate_mutes_a_leak_and_keeps_the_caller() -> None:
    """The echo path jumps 60 ms (a stalled loop on the caller's side): AEC3 must re-converge and
    leaks meanwhile; the gate mutes what the echo explains, the caller's speech still passes."""
    agent = espeak(STORY, RATE, AGENT_VOICE)[: 6 * RATE]
    caller = espeak(INTERRUPTION, RATE, CALLER_VOICE).astype(np.float64)
    echo = np.zeros(len(agent))
    echo[1600 : 3 * RATE] = agent[: 3 * RATE - 1600]  # 200 ms late, then 260 ms from 3 s on
    echo[3 * RATE :] = agent[3 * RATE - 2080 : len(agent) - 2080]
    echo *= 10 ** (-12 / 20)
    talking = echo.copy()
    talking[4 * RATE : 4 * RATE + len(caller)] += caller[: 2 * RATE]

    def cancel(mic: np.ndarray, margin_db: float | None) -> tuple[np.ndarray, EchoCanceller]:
        canceller = EchoCanceller(RATE, suppress_margin_db=margin_db)
        out = []
        for k in range(0, len(agent) - CHUNK, CHUNK):
            canceller.far_end(agent[k : k + CHUNK], k / RATE)
            out.append(canceller.near_end(mic[k : k + CHUNK].astype(np.int16), k / RATE + 0.02))
        return np.concatenate(out), canceller

    jump = slice(3 * RATE, 3 * RATE + 4000)  # the 500 ms after the jump
    leaked, _ = cancel(echo, None)
    gated, canceller = cancel(echo, 6.0)
    assert canceller.gate is not None and canceller.gate.muted > 0
    assert _db(gated[jump]) < _db(leaked[jump]) - 10
    spoken = slice(4 * RATE, 5 * RATE + RATE // 2)  # the caller's first 1.5 s
    kept, _ = cancel(talking, 6.0)
    assert abs(_db(kept[spoken]) - _db(caller[: 3 * RATE // 2])) < 2


def test_whole_frames_out_and_the_rest_kept() -> None:
    canceller = EchoCanceller(RATE)
    sizes = [len(canceller.near_end(np.full(100, 7, np.int16), k * 0.0125)) for k in range(5)]
    assert sizes == [80, 80, 80, 160, 80]  # 10 ms frames; 20, 40, 60, 0, 20 samples carried


def test_unsupported_rate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="22050 Hz"):
        EchoCanceller(22_050)
    with pytest.raises(ConfigError, match="margin must be >= 0 dB"):
        EchoCanceller(RATE, suppress_margin_db=-3.0)
