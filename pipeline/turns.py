"""Turn-taking: a sans-I/O state machine from VAD scores to turn events.

Feed it one speech probability per VAD window with the window's end time on the *input audio
time line* (seconds of caller audio received, so results do not depend on the wall clock), and it
returns the turn events that window caused::

    QUIET ─speech─▶ ONSET ─min_speech─▶ SPEAKING ─silence─▶ PAUSE ─silence_duration─▶ QUIET
                      │ silence         ▲ (SPEECH_STARTED)    │ (PAUSED after        (TURN_ENDED)
                      ▼                 └──────speech─────────┘  tentative_silence:
                    QUIET                     (RESUMED)          ASR may start early)

``INTERRUPT`` fires once per utterance when speech has lasted ``interrupt_min_speech_ms``; the
session uses it for barge-in (so a cough does not interrupt the agent).

Silero's probability takes 30-130 ms of a word to reach ``threshold`` (longest on an "s":
"Stop" 128 ms). With ``hold_threshold`` a quiet window at or above it sends ``HINT`` — a first
window that may be speech, for the session to hold the agent's voice already — and ``NOISE``
when the probability falls back below it, or has not reached ``threshold`` within
``hint_max_ms``; the turn itself still begins at ``threshold`` (``ONSET``).

The VAD's speech probability stays high for 50-150 ms after the last sound (Silero's own
tail), so a pause found from it alone is found that much late. With ``early_pause_db`` the
loudness of each window helps: windows ``early_pause_db`` below the loudest of the utterance
count as quiet, and ``tentative_silence_ms`` of them send ``PAUSED`` while the VAD still says
speech (``RESUMED`` when the sound comes back before the VAD agrees). A quiet stretch inside a
word costs at most an early transcription that is dropped.

With ``silence_from_loudness_ms`` as well, the silence that *ends* the turn is counted from
where the sound fell (the first of the quiet windows that ran into the VAD's pause), at most
that many ms before the VAD's silence: a caller's pause is timed from their last sound, not
from the end of Silero's tail. Only a quiet stretch the VAD then agreed was silence moves it,
so sound within the words never does.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

EAGERNESS_NAMES = ("low", "medium", "high", "auto")


@dataclass(slots=True)
class TurnSettings:
    """Turn-detection parameters (names follow OpenAI's ``turn_detection``)."""

    threshold: float = 0.5
    """Speech probability above which a window counts as speech."""
    hysteresis: float = 0.15
    """Once speaking, a window stays speech down to ``threshold - hysteresis``."""
    min_speech_ms: int = 96
    """Speech must last this long before ``SPEECH_STARTED`` (filters clicks)."""
    prefix_padding_ms: int = 300
    """Audio kept before the detected onset, so the first syllable reaches ASR."""
    silence_duration_ms: int = 500
    """Silence that ends the turn."""
    tentative_silence_ms: int = 64
    """Silence after which the turn is *probably* over: ASR starts early on ``PAUSED``."""
    interrupt_min_speech_ms: int = 192
    """Speech needed to interrupt the agent (barge-in)."""
    eagerness: str | None = None
    """``semantic_vad``: ``low``, ``medium``, ``high`` or ``auto`` (``medium``); the words and
    the end-of-turn judge set the silence that ends a turn, scaled by it
    (``endpointing.EAGERNESS``). None: ``server_vad``."""
    idle_timeout_ms: int | None = None
    """``server_vad``: after this long without speech from the caller (counted from the end of
    the agent's reply, or of the caller's last turn), commit the silence and ask for a reply."""

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1")
        for name in (
            "min_speech_ms",
            "prefix_padding_ms",
            "silence_duration_ms",
            "tentative_silence_ms",
            "interrupt_min_speech_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.eagerness is not None and self.eagerness not in EAGERNESS_NAMES:
            raise ValueError(f"eagerness must be one of {', '.join(EAGERNESS_NAMES)}")
        if self.idle_timeout_ms is not None and self.idle_timeout_ms <= 0:
            raise ValueError("idle_timeout_ms must be > 0")


class TurnEventKind(enum.Enum):
    HINT = "hint"
    """A quiet window at ``hold_threshold``: maybe the start of speech (the session may hold
    its audio already)."""
    ONSET = "onset"
    """A first speech window: maybe speech, maybe a click (the session may hold its audio)."""
    NOISE = "noise"
    """The onset did not last ``min_speech_ms`` (or a hint did not become an onset): it was not
    speech."""
    SPEECH_STARTED = "speech_started"
    INTERRUPT = "interrupt"
    PAUSED = "paused"
    RESUMED = "resumed"
    TURN_ENDED = "turn_ended"


@dataclass(slots=True, frozen=True)
class TurnEvent:
    kind: TurnEventKind
    at: float
    """Input-audio time (s): speech onset for SPEECH_STARTED, speech end for PAUSED/TURN_ENDED,
    the deciding window's end otherwise."""


class _State(enum.Enum):
    QUIET = 0
    ONSET = 1
    SPEAKING = 2
    PAUSE = 3


class TurnDetector:
    """One caller's turn-taking state. Not thread-safe; one per session."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        early_pause_db: float = 0.0,
        hold_threshold: float = 0.0,
        hint_max_ms: int = 96,
        silence_from_loudness_ms: int = 0,
    ) -> None:
        settings.validate()
        if early_pause_db < 0 or silence_from_loudness_ms < 0:
            raise ValueError("early_pause_db and silence_from_loudness_ms must be >= 0")
        if not 0.0 <= hold_threshold < 1.0 or hint_max_ms < 0:
            raise ValueError("hold_threshold must be within [0, 1), hint_max_ms >= 0")
        self.settings = settings
        self.early_pause_db = early_pause_db
        """Windows this far below the utterance's loudest count as quiet (0: the VAD alone)."""
        self.hold_threshold = hold_threshold
        """A quiet window this probable sends ``HINT`` (0, or at ``threshold`` or above: never)."""
        self.hint_max_ms = hint_max_ms
        self.silence_from_loudness_s = silence_from_loudness_ms / 1000.0
        """With ``early_pause_db``: the silence is counted from the quiet windows before the
        VAD's pause, at most this long before it (0: from the VAD's)."""
        self._hint: float | None = None  # when the hint began (its window's start)
        self._hint_spent = False  # (it timed out: no new one until the probability falls)
        self._peak_db = -math.inf
        self._quiet_since: float | None = None
        self._early = False  # PAUSED sent from the loudness while the VAD still says speech
        self._state = _State.QUIET
        self._onset = 0.0
        self._silence_start = 0.0
        self._speech_end = 0.0
        self._paused_sent = False
        self._interrupt_sent = False
        self._silence_target: float | None = None
        self._last_end = 0.0

    def set_silence_target(self, milliseconds: int) -> list[TurnEvent]:
        """For the current pause only: end the turn after this much silence instead of
        ``silence_duration_ms`` (a semantic end-of-turn signal); reset when speech resumes.
        Returns ``TURN_ENDED`` at once when the silence so far is already enough."""
        if self._early and self._state is _State.SPEAKING:  # (kept until the VAD's pause)
            self._silence_target = float(milliseconds)
            return []
        if self._state is not _State.PAUSE:
            return []
        self._silence_target = float(milliseconds)
        return self._pause_progress(self._last_end)

    @property
    def quiet(self) -> bool:
        """No speech, not even a first window that may be speech."""
        return self._state is _State.QUIET

    @property
    def speaking(self) -> bool:
        """True from SPEECH_STARTED until TURN_ENDED (pauses included)."""
        return self._state in (_State.SPEAKING, _State.PAUSE)

    def reset(self) -> None:
        self._state = _State.QUIET
        self._hint, self._hint_spent = None, False
        self._paused_sent = False
        self._interrupt_sent = False
        self._silence_target = None
        self._peak_db = -math.inf
        self._quiet_since = None
        self._early = False

    def feed(
        self, probability: float, end: float, duration: float, level_db: float | None = None
    ) -> list[TurnEvent]:
        """Account for one VAD window ending at ``end`` (s) lasting ``duration`` (s), its
        loudness ``level_db`` (dBFS; None: unknown, the VAD alone decides)."""
        s = self.settings
        self._last_end = end
        start = end - duration
        if self._state is _State.QUIET:
            if probability >= s.threshold:
                self._onset = start
                self._state = _State.ONSET
                self._hint, self._hint_spent = None, False
                self._peak_db, self._quiet_since = _level(level_db), None
                return [TurnEvent(TurnEventKind.ONSET, start), *self._after_onset_window(end)]
            return self._hinted(probability, start, end)
        if self._state is _State.ONSET:
            if probability >= s.threshold - s.hysteresis:
                self._peak_db = max(self._peak_db, _level(level_db))
                return self._after_onset_window(end)
            self._state = _State.QUIET
            return [TurnEvent(TurnEventKind.NOISE, end)]
        if self._state is _State.SPEAKING:
            if probability >= s.threshold - s.hysteresis:
                return self._loudness(start, end, level_db) + self._interrupt_due(end)
            self._silence_start = start
            if self._quiet_since is not None and self.silence_from_loudness_s > 0:
                # the sound fell before the VAD's probability did: the silence began there
                self._silence_start = max(self._quiet_since, start - self.silence_from_loudness_s)
            # the speech ended where the loudness said, if its pause stood
            early = self._quiet_since if self._early else None
            self._speech_end = start if early is None else early
            self._state = _State.PAUSE
            self._early, self._quiet_since = False, None  # (PAUSED, if sent, stands)
            return self._pause_progress(end)
        # PAUSE
        if probability >= s.threshold:
            self._state = _State.SPEAKING
            self._silence_target = None
            self._peak_db = max(self._peak_db, _level(level_db))
            events = []
            if self._paused_sent:
                events.append(TurnEvent(TurnEventKind.RESUMED, end))
            self._paused_sent = False
            return events + self._interrupt_due(end)
        return self._pause_progress(end)

    def _hinted(self, probability: float, start: float, end: float) -> list[TurnEvent]:
        """A quiet window below ``threshold``: ``HINT`` at ``hold_threshold``, ``NOISE`` once
        a hint falls back below it or lasts ``hint_max_ms`` without reaching ``threshold``."""
        if not 0.0 < self.hold_threshold < self.settings.threshold:
            return []
        if probability < self.hold_threshold:
            self._hint_spent = False
            if self._hint is None:
                return []
            self._hint = None
            return [TurnEvent(TurnEventKind.NOISE, end)]
        if self._hint is None:
            if self._hint_spent:
                return []
            self._hint = start
            return [TurnEvent(TurnEventKind.HINT, start)]
        if (end - self._hint) * 1000.0 - 1e-6 <= self.hint_max_ms:
            return []
        self._hint, self._hint_spent = None, True
        return [TurnEvent(TurnEventKind.NOISE, end)]

    def _loudness(self, start: float, end: float, level_db: float | None) -> list[TurnEvent]:
        """While the VAD says speech: a quiet stretch of ``tentative_silence_ms`` is a pause
        (``PAUSED`` from its first quiet window); sound again takes it back (``RESUMED``)."""
        if self.early_pause_db <= 0 or level_db is None:
            return []
        if level_db >= self._peak_db - self.early_pause_db:
            self._peak_db = max(self._peak_db, level_db)
            self._quiet_since = None
            if not self._early:
                return []
            self._early = self._paused_sent = False
            self._silence_target = None
            return [TurnEvent(TurnEventKind.RESUMED, end)]
        if self._quiet_since is None:
            self._quiet_since = start
        quiet_ms = (end - self._quiet_since) * 1000.0 + 1e-6
        if self._paused_sent or quiet_ms < self.settings.tentative_silence_ms:
            return []
        self._paused_sent = self._early = True
        return [TurnEvent(TurnEventKind.PAUSED, self._quiet_since)]

    def _after_onset_window(self, end: float) -> list[TurnEvent]:
        if (end - self._onset) * 1000.0 + 1e-6 < self.settings.min_speech_ms:
            return []
        self._state = _State.SPEAKING
        self._paused_sent = False
        self._interrupt_sent = False
        return [TurnEvent(TurnEventKind.SPEECH_STARTED, self._onset), *self._interrupt_due(end)]

    def _interrupt_due(self, end: float) -> list[TurnEvent]:
        if self._interrupt_sent:
            return []
        if (end - self._onset) * 1000.0 + 1e-6 < self.settings.interrupt_min_speech_ms:
            return []
        self._interrupt_sent = True
        return [TurnEvent(TurnEventKind.INTERRUPT, end)]

    def _pause_progress(self, end: float) -> list[TurnEvent]:
        silence_ms = (end - self._silence_start) * 1000.0 + 1e-6
        target = self._silence_target
        if silence_ms >= (self.settings.silence_duration_ms if target is None else target):
            self.reset()
            return [TurnEvent(TurnEventKind.TURN_ENDED, self._speech_end)]
        if not self._paused_sent and silence_ms >= self.settings.tentative_silence_ms:
            self._paused_sent = True
            return [TurnEvent(TurnEventKind.PAUSED, self._speech_end)]
        return []


def _level(level_db: float | None) -> float:
    return -math.inf if level_db is None else level_db
