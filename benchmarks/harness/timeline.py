"""What one caller saw, as a timeline, and the pure functions that measure a turn from it.

Both clients (Realtime and Twilio) reduce what the server sends to :class:`Ev` records stamped
with ``time.perf_counter()`` at arrival; the microphone stamps when it *sent* the chunks holding
the first and the last audible sample of each thing the caller says (:class:`Spoken`). Every
number in a turn's record is computed here from those two, so it can be tested on synthetic
timelines without a server.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jiwer

AUDIO = "audio"  # agent audio: response.output_audio.delta / Twilio media
CREATED = "response.created"
DONE = "response.done"
METRICS = "metrics"  # x.voice.turn.metrics
TRANSCRIPT = "transcript"  # conversation.item.input_audio_transcription.completed
REPLY_TEXT = "reply_text"  # response.output_audio_transcript.done
CLEAR = "clear"  # Twilio
MARK = "mark"  # Twilio
ERROR = "error"

OVERHEAD_KEYS = ("overhead_ms", "overhead")
"""Where a metrics event may carry the framework's own share of the wait (not a milestone)."""

REALTIME = "realtime"
TWILIO = "twilio"
SIP = "sip"
"""A softphone calling the server's SIP agent (``sip_client.py``): a phone line like Twilio's."""
BARESIP = "baresip"
"""A real softphone (baresip) calling the SIP agent, timed on the loopback wire
(``baresip_caller.py``): a phone line like SIP's."""
WEBRTC = "webrtc"
"""The Realtime protocol over WebRTC: its caller is a Realtime caller (``protocol`` REALTIME)
whose audio rides RTP (``webrtc_client.py``)."""


@dataclass(slots=True)
class Ev:
    t: float
    kind: str
    response: str | None = None
    loud: bool = False
    text: str = ""
    status: str | None = None
    reason: str | None = None
    metrics: dict[str, float] | None = None
    seconds: float = 0.0
    """Agent audio: how long it plays."""


@dataclass(slots=True)
class Spoken:
    """When the caller's microphone sent the first and the last audible chunk of an utterance."""

    onset: float | None = None
    end: float | None = None


@dataclass(slots=True)
class TurnClock:
    started: float
    segments: list[Spoken] = field(default_factory=list)
    barge_in: Spoken | None = None


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def first_loud_audio(
    events: Iterable[Ev], after: float, exclude: frozenset[str | None] = frozenset()
) -> Ev | None:
    """The first audible agent audio received after ``after`` (not from ``exclude`` replies)."""
    for ev in events:
        if ev.kind == AUDIO and ev.loud and ev.t > after and ev.response not in exclude:
            return ev
    return None


def talking_over(events: Iterable[Ev], before: float) -> frozenset[str | None]:
    """Realtime replies already audible at ``before`` (they talked over the caller)."""
    return frozenset(
        ev.response
        for ev in events
        if ev.kind == AUDIO and ev.loud and ev.t <= before and ev.response is not None
    )


STALL_ALLOWANCE_S = 0.06
"""The jitter a caller's player absorbs before a late piece of a reply is heard as a gap."""


def reply_stalls(
    events: Iterable[Ev], response: str | None, until: float, allowance_s: float = STALL_ALLOWANCE_S
) -> list[float]:
    """The gaps (seconds) a caller hears inside one reply: a player starts the reply at its
    first audio and plays the pieces back to back; a piece that arrives more than
    ``allowance_s`` after the audio before it ran out leaves a gap of that lateness (and the
    player goes on from it). Pieces received from ``until`` on (the caller speaking over the
    reply, which the server may hold) are not counted. No gaps are measured where the audio's
    length is unknown (a WebRTC caller records only when audio was audible)."""
    gaps: list[float] = []
    ends: float | None = None  # when the audio received so far will have been played
    for ev in events:
        if ev.kind != AUDIO or ev.response != response or ev.t >= until:
            continue
        if ev.seconds <= 0:
            return []
        if ends is None:
            ends = ev.t
        elif ev.t > ends + allowance_s:
            gaps.append(ev.t - ends)
            ends = ev.t
        ends += ev.seconds
    return gaps


def false_interruptions(events: Sequence[Ev], segments: Sequence[Spoken]) -> list[bool]:
    """For each mid-sentence pause (between segment i and i+1): did the agent start a reply —
    ``response.created`` or audible agent audio received — before the caller finished the next
    segment, i.e. in ``(end of segment i, end of segment i+1]``? The server needs some time to
    react to a pause, so its reaction may well arrive while the caller already speaks again."""
    out = []
    for before, after in itertools.pairwise(segments):
        lo, hi = before.end, after.end
        if lo is None or hi is None:
            out.append(False)
            continue
        out.append(
            any(
                lo < ev.t <= hi and (ev.kind == CREATED or (ev.kind == AUDIO and ev.loud))
                for ev in events
            )
        )
    return out


def cut_off_in_silence(events: Iterable[Ev], end: float, barge_in: Spoken | None) -> int:
    """Replies the server cut off while the caller said nothing (an echo, a noise taken for
    speech): Twilio ``clear``s, or Realtime responses cancelled for a detected turn, after the
    caller's last segment ended and before the scripted interruption (if any)."""
    until = barge_in.onset if barge_in is not None and barge_in.onset is not None else math.inf
    return sum(
        1
        for ev in events
        if end < ev.t < until
        and (ev.kind == CLEAR or (ev.kind == DONE and ev.reason == "turn_detected"))
    )


def done_of(events: Iterable[Ev], response: str | None) -> Ev | None:
    return next((ev for ev in events if ev.kind == DONE and ev.response == response), None)


def metrics_of(events: Iterable[Ev], response: str | None) -> dict[str, float] | None:
    found = None
    for ev in events:
        if ev.kind == METRICS and ev.response == response:
            found = ev.metrics
    return found


def reply_text_of(events: Iterable[Ev], response: str | None) -> str:
    return next((ev.text for ev in events if ev.kind == REPLY_TEXT and ev.response == response), "")


def transcripts_between(events: Iterable[Ev], lo: float, hi: float) -> str:
    """The user transcripts received in ``[lo, hi)``, joined (one turn may be several items)."""
    parts = [ev.text.strip() for ev in events if ev.kind == TRANSCRIPT and lo <= ev.t < hi]
    return " ".join(p for p in parts if p)


_SAME_SLOT_S = 0.02
"""One packet of phone or WebRTC audio."""


@dataclass(slots=True)
class BargeInResult:
    playing: bool
    """A reply was audible when the interruption began."""
    stop: float | None = None
    """When the last audio chunk of the interrupted reply was received."""
    interrupted: bool | None = None
    """The reply was cut short (Realtime: ``response.done`` cancelled; Twilio: ``clear``);
    False when it ended on its own first; None when the client cannot tell."""
    response: str | None = None
    status: str | None = None
    reason: str | None = None
    clear: float | None = None

    def latency_ms(self, onset: float) -> float | None:
        """From the interruption's onset to the reply's last chunk: 0 when that chunk came
        within one packet (20 ms) before the onset — they shared a packet slot, the agent
        stopped at once; None when it came earlier (a pause in the reply the caller spoke into:
        a phone line cannot tell when the agent stopped) or the reply ended on its own."""
        if self.stop is None or self.interrupted is False or self.stop < onset - _SAME_SLOT_S:
            return None
        return ms(max(0.0, self.stop - onset))

    def quiet_ms(self, onset: float) -> float | None:
        """How long a reply that was still playing had been silent when the caller cut in
        (a pause between its sentences): why :meth:`latency_ms` cannot say when it stopped."""
        if not self.playing or self.stop is None or self.stop >= onset - _SAME_SLOT_S:
            return None
        return ms(onset - self.stop)


def realtime_barge_in(events: Sequence[Ev], onset: float) -> BargeInResult:
    """The reply playing at ``onset`` (the interruption's first audible chunk sent) and when its
    audio stopped arriving: its last ``response.output_audio.delta``."""
    playing = None
    for ev in events:
        if ev.kind == AUDIO and ev.t <= onset:
            playing = ev.response
    if playing is None:
        return BargeInResult(False)
    last = max(ev.t for ev in events if ev.kind == AUDIO and ev.response == playing)
    done = done_of(events, playing)
    if done is not None and done.t <= onset:  # it had ended before the caller cut in
        return BargeInResult(False, last, False, playing, done.status, done.reason)
    result = BargeInResult(True, last, None, playing)
    if done is not None:
        result.status, result.reason = done.status, done.reason
        result.interrupted = done.status == "cancelled"
    return result


def twilio_barge_in(events: Sequence[Ev], onset: float, gap_s: float, now: float) -> BargeInResult:
    """Twilio has no reply ids: the reply playing at ``onset`` is the burst of audible media
    around it. It stopped at the last media chunk before the server's ``clear``, or, without a
    ``clear``, at the last audible chunk before ``gap_s`` without any (then ``interrupted`` is
    unknown: the reply may have ended on its own)."""
    last_loud = last_any = None
    for ev in events:
        if ev.kind == AUDIO and ev.t <= onset:
            last_any = ev.t
            if ev.loud:
                last_loud = ev.t
    if last_loud is None or onset - last_loud >= gap_s:  # nothing audible was playing
        return BargeInResult(False, last_loud, False)
    assert last_any is not None
    for ev in events:
        if ev.t <= onset:
            continue
        if ev.kind == CLEAR:
            return BargeInResult(True, last_any, True, clear=ev.t)
        if ev.kind == AUDIO:
            if ev.loud:
                if ev.t - last_loud >= gap_s:
                    return BargeInResult(True, last_loud, None)
                last_loud = ev.t
            last_any = ev.t
    if now - last_loud >= gap_s:
        return BargeInResult(True, last_loud, None)
    return BargeInResult(True)  # still playing


_WORDS = re.compile(r"[^a-z0-9]+")


def normalize(text: str) -> str:
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(_WORDS.sub(" ", text).split())


def wer(reference: str, hypothesis: str) -> float | None:
    """Word error rate after lowercasing and removing punctuation (1.0 for nothing heard)."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return None
    if not hyp:
        return 1.0
    return round(float(jiwer.wer(ref, hyp)), 4)


def blank_record() -> dict[str, Any]:
    """A turn's measurements before anything was measured: missed, nothing heard."""
    return {
        "missed": True,
        "voice_to_voice_ms": None,
        "reply_status": None,
        "pauses": [],
        "false_interruptions": 0,
        "cut_off_in_silence": 0,
        "stages_ms": {},
        "overhead_ms": None,
        "transport_ms": None,
        "stalls_ms": [],
        "user_transcript": "",
        "wer": None,
        "reply_transcript": "",
        "barge_in": None,
        "errors": [],
    }


def analyze_turn(
    events: Sequence[Ev],
    clock: TurnClock,
    *,
    text: str,
    pauses_ms: Sequence[int],
    barge_in_text: str | None,
    backchannel: bool = False,
    protocol: str,
    timeout_s: float,
    gap_s: float,
    now: float,
) -> dict[str, Any]:
    """Everything measured for one turn, from its timeline (events received since it began)."""
    rec = blank_record()
    rec["errors"] = [ev.text for ev in events if ev.kind == ERROR]
    flags = false_interruptions(events, clock.segments)
    rec["pauses"] = [
        {"pause_ms": p, "false_interruption": f} for p, f in zip(pauses_ms, flags, strict=False)
    ]
    rec["false_interruptions"] = sum(flags)
    end = clock.segments[-1].end if clock.segments else None
    if end is None:
        return rec
    rec["cut_off_in_silence"] = cut_off_in_silence(events, end, clock.barge_in)
    over = talking_over(events, end) if protocol == REALTIME else frozenset()
    reply = first_loud_audio(events, end, over)
    if reply is None or reply.t - end > timeout_s:
        rec["user_transcript"] = transcripts_between(events, clock.started, now)
        rec["wer"] = wer(text, rec["user_transcript"]) if protocol == REALTIME else None
        return rec
    rec["missed"] = False
    v2v = ms(reply.t - end)
    rec["voice_to_voice_ms"] = v2v
    barge = clock.barge_in
    main_until = barge.onset if barge is not None and barge.onset is not None else now
    rec["user_transcript"] = transcripts_between(events, clock.started, main_until)
    if protocol == REALTIME:  # a phone line has no transcripts
        rec["wer"] = wer(text, rec["user_transcript"])
        done = done_of(events, reply.response)
        rec["reply_status"] = done.status if done else None
        rec["reply_transcript"] = reply_text_of(events, reply.response)
        marks = metrics_of(events, reply.response) or {}
        rec["stages_ms"] = {k: v for k, v in marks.items() if k not in OVERHEAD_KEYS}
        rec["overhead_ms"] = next((marks[k] for k in OVERHEAD_KEYS if k in marks), None)
        sent = marks.get("first_audio_sent")
        if sent is not None:
            rec["transport_ms"] = round(v2v - sent, 1)
        rec["stalls_ms"] = [ms(g) for g in reply_stalls(events, reply.response, main_until)]
    if barge is not None and barge.onset is not None:
        rec["barge_in"] = _barge_in_record(
            events, barge, barge_in_text or "", protocol, gap_s, now, timeout_s
        )
        rec["barge_in"]["backchannel"] = backchannel
        rec["barge_in"]["cut_off"] = _cut_off(events, barge.onset, protocol)
    return rec


def _cut_off(events: Sequence[Ev], onset: float, protocol: str) -> bool | None:
    """Whether the reply playing at ``onset`` was cut short: Realtime, its ``response.done``
    says ``cancelled``; Twilio, the server sent a ``clear`` after ``onset`` (a reply only held
    for a moment gets none). None: no reply was playing."""
    if protocol != REALTIME:
        return any(ev.kind == CLEAR and ev.t > onset for ev in events)
    result = realtime_barge_in(events, onset)
    return result.status == "cancelled" if result.playing else None


def _barge_in_record(
    events: Sequence[Ev],
    barge: Spoken,
    text: str,
    protocol: str,
    gap_s: float,
    now: float,
    timeout_s: float,
) -> dict[str, Any]:
    assert barge.onset is not None
    onset = barge.onset
    if protocol == REALTIME:
        result = realtime_barge_in(events, onset)
    else:
        result = twilio_barge_in(events, onset, gap_s, now)
    rec: dict[str, Any] = {
        "reply_playing": result.playing,
        "latency_ms": result.latency_ms(onset),
        "interrupted": result.interrupted,
        "status": result.status,
        "reason": result.reason,
        "clear_ms": None if result.clear is None else ms(result.clear - onset),
        "quiet_ms": result.quiet_ms(onset),
        "reply_v2v_ms": None,
        "transcript": transcripts_between(events, onset, now),
        "wer": None,
    }
    if protocol == REALTIME:
        rec["wer"] = wer(text, rec["transcript"])
    if barge.end is not None:
        after = max(barge.end, result.stop or barge.end, result.clear or barge.end)
        exclude = frozenset({result.response}) if result.response else frozenset()
        reply = first_loud_audio(events, after, exclude)
        if reply is not None and reply.t - barge.end <= timeout_s:
            rec["reply_v2v_ms"] = ms(reply.t - barge.end)
    return rec
