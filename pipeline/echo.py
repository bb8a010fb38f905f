"""Echo cancellation: the agent's own voice taken out of the caller's audio, before the VAD.

A caller on a speakerphone (or a phone line that echoes) sends the agent's voice back, a few
hundred milliseconds late and quieter; the VAD hears speech and the agent cuts itself off. The
transport adapter knows both sides, so it feeds them here on the session's clock:

- :meth:`EchoCanceller.far_end` — the agent's audio, as it is sent to be played;
- :meth:`EchoCanceller.near_end` — the caller's audio, as it arrives; returns it without the echo.

The work is WebRTC's audio processing module (AEC3: delay estimation, an adaptive filter and a
residual echo suppressor, plus a high-pass filter), through LiveKit's Python bindings
(``livekit.rtc.AudioProcessingModule``), in 10 ms frames. The two streams are lined up by
time: the agent's audio is laid on a time line from when it was sent (back to back, as the
phone plays it), and each 10 ms frame of the caller goes in with the 10 ms of that line it was
recorded against (silence where the agent said nothing), so AEC3 sees the real delay between
them and nothing else: the line is read one frame per frame, never skipping on jitter. Neither
direction adds latency beyond the 10 ms framing (Twilio's and RTP's 20 ms chunks are two whole
frames). It costs about 0.1 ms of CPU per 10 ms frame, on the event loop, while the agent
speaks and for 0.8 s after (its echo's longest delay and a margin); then, with nothing of the
agent that could come back, the module rests and the caller's audio passes as it came.

AEC3 is careful while it does not know the echo path: on a line with no echo at all it still
dulls a caller who talks over the agent (a barge-in came 100 ms to over a second late in a
simulation). So :class:`EchoPresence` watches the line, and once the agent has spoken for half
a second with nothing of it coming back, the caller's audio passes as it came (the module goes on
adapting, in case an echo appears: two checks that find it switch it back on).

What AEC3 leaves when the echo path jumps (an event loop that stalls moves the caller's audio
against the reference) :class:`ResidualEchoGate` mutes, with ``suppress_margin_db``: 10 ms of
the caller no louder than the echo could be, by the delay and gain the detector found.

Should the module ever fail, the error is logged once and the caller's audio passes through
unchanged: the call goes on as it would without echo cancellation.
"""

from __future__ import annotations

import logging

import numpy as np
from livekit import rtc

from .errors import ConfigError

log = logging.getLogger("voice.echo")

_AUDIBLE = 100.0
"""RMS (PCM16) above which the agent counts as speaking (about -50 dBFS)."""
_DROWNED = 4.0
"""A caller this much louder than the echo they would hear (6 dB) may hide it: such a check
proves no "no echo"."""
RATES = (8_000, 16_000, 32_000, 48_000)
"""The rates the audio processing module takes."""
FRAME_S = 0.01
REST_MARGIN_S = 0.2
"""While the agent has been silent for longer than the longest echo delay looked for (600 ms) and
this, no echo of it can be on the caller's line: the module is left alone (both directions, so
the two stay lined up) and the caller's audio passes as it came. Feeding it 10 ms frames of
silence and of the caller cost two native calls each, ~70 % of an idle phone call's event loop
(5 % of a core a call); it keeps what it learnt of the echo path for the agent's next words."""


class EchoPresence:
    """Is the agent's voice coming back on the caller's line?

    Every ``every_ms`` the caller's last ``window_ms`` of audio is compared with the agent's
    reference at every delay up to ``max_delay_ms``: the peak normalized cross-correlation is
    near 1 for a plain echo and near 0 for speech of the caller's own or silence. Two checks in a
    row peaking at ``on`` or above at the same delay (within 2 ms: an echo path holds still, a
    chance peak does not) say "echo"; ``off_checks`` checks below ``off``, with none at ``off``
    or above between them, each while the agent was audibly speaking, say "no echo". An echo is
    assumed until then (the first words of the first reply are not yet known to be safe).
    "Audibly speaking" means at every delay the echo may have: from 0 up to the delay of the
    echo last found (+ 50 ms), at delay 0 when none was found yet. A check where the window
    shifted by such a delay holds the agent's silence proves nothing: as a reply ends the
    caller's line goes quiet with the agent's last words still in the window, and taking that
    quiet for "no echo" let the next reply's first ~200 ms of echo through uncancelled (the
    agent held itself on its own voice). Once an echo was found, a check where the caller is
    over 6 dB louder than that echo would be proves nothing either: their speech over the agent
    drowns the correlation.
    The answer is :attr:`present`.
    """

    def __init__(
        self,
        rate: int,
        *,
        window_ms: int = 500,
        max_delay_ms: int = 600,
        every_ms: int = 100,
        on: float = 0.3,
        off: float = 0.15,
        off_checks: int = 5,
    ) -> None:
        self.window = window_ms * rate // 1000
        self.max_delay = max_delay_ms * rate // 1000
        self.every = every_ms * rate // 1000
        self.on, self.off, self.off_checks = on, off, off_checks
        size = self.window + self.max_delay
        self._mic = np.zeros(size)
        self._ref = np.zeros(size)
        self._since_check = 0
        self._quiet_checks = 0
        self._lag: int | None = None  # the delay of the last check's peak, if it was high
        self._echo_lag: int | None = None  # the lag of the last echo found
        self._lag_margin = 50 * rate // 1000
        self._lag_tolerance = 2 * rate // 1000
        self.present = True
        self.correlation: float | None = None
        """The last check's peak (None: the agent was not speaking)."""
        self.gain: float | None = None
        """The echo's amplitude relative to the agent's audio, when one was found."""
        self._n = 1 << int(np.ceil(np.log2(size + self.window)))

    def add(self, mic: np.ndarray, reference: np.ndarray) -> None:
        """The same stretch of the caller's audio and of the agent's reference."""
        n = len(mic)
        self._mic = np.concatenate([self._mic[n:], mic])
        self._ref = np.concatenate([self._ref[n:], reference])
        self._since_check += n
        if self._since_check >= self.every:
            self._since_check = 0
            self._check()

    def _check(self) -> None:
        ref, mic = self._ref, self._mic[-self.window :]
        found = self._peak(ref, mic)
        self.correlation = None if found is None else found[0]
        if found is None:
            return
        peak, lag, judged, gain = found
        if peak >= self.on:
            steady = self._lag is not None and abs(lag - self._lag) <= self._lag_tolerance
            self._lag, self._quiet_checks = lag, 0
            if steady:
                self.present, self._echo_lag, self.gain = True, lag, gain
            return
        self._lag = None
        if peak >= self.off:
            self._quiet_checks = 0
        elif judged:  # (else the quiet may be the agent's own silence coming back)
            self._quiet_checks += 1
            if self._quiet_checks >= self.off_checks:
                self.present = False

    @property
    def delay(self) -> int | None:
        """The delay of the echo last found (samples), if one was."""
        return None if self._echo_lag is None else self.max_delay - self._echo_lag

    def _peak(self, ref: np.ndarray, mic: np.ndarray) -> tuple[float, int, bool, float] | None:
        """The max over delays of |Σ mic·ref(delayed)| / √(Σ mic² · Σ ref(delayed)²), where it
        is (samples from the longest delay), whether the agent was audible at every delay the
        echo may have (only then does a low peak say "no echo") and the gain there
        (|Σ mic·ref| / Σ ref²); None when the agent was quiet all along (nothing to compare)."""
        if float(np.mean(np.square(ref))) < _AUDIBLE**2:
            return None
        squares = np.concatenate([[0.0], np.cumsum(np.square(ref))])
        ref_energy = (
            squares[self.window : self.window + self.max_delay + 1] - squares[: self.max_delay + 1]
        )
        lag = self.max_delay if self._echo_lag is None else self._echo_lag - self._lag_margin
        delays = ref_energy[max(0, lag) :]  # (a lag counts from the longest delay)
        judged = bool(np.min(delays) >= _AUDIBLE**2 * self.window)
        mic_energy = float(np.dot(mic, mic))
        if self.gain is not None and self._echo_lag is not None:  # the caller may drown it
            echo_energy = self.gain**2 * float(ref_energy[self._echo_lag])
            judged = judged and mic_energy <= _DROWNED * echo_energy
        if mic_energy < _AUDIBLE**2 * len(mic) / 100:  # silence on the line: no echo
            return 0.0, 0, judged, 0.0
        spectrum = np.fft.rfft(ref, self._n) * np.conj(np.fft.rfft(mic, self._n))
        products = np.fft.irfft(spectrum, self._n)[: self.max_delay + 1]  # Σ mic[i]·ref[i+s]
        rho = np.abs(products) / np.sqrt(mic_energy * np.maximum(ref_energy, 1.0))
        best = int(np.argmax(rho))
        gain = abs(float(products[best])) / max(float(ref_energy[best]), 1.0)
        return float(rho[best]), best, judged, gain


class ResidualEchoGate:
    """Mutes what the echo alone explains: a double-talk decision by energy, after the canceller.

    AEC3 leaves some echo when the echo path jumps (a stalled event loop on either side moves
    the caller's audio against the reference by tens of ms) and it must re-converge; that
    residue is speech to the VAD, which holds the agent on its own voice. This gate knows the
    echo path from :class:`EchoPresence` (delay and gain) and keeps the energy of each 10 ms of
    the reference; a frame of the caller whose energy (before the canceller) is at most
    ``margin_db`` above the loudest the echo could be — the reference ``spread_ms`` either side
    of the delay, times the gain — holds nothing but echo, and the canceller's output for it
    is muted (by 40 dB). The caller speaking over the echo is louder than the echo alone (by more
    than ``margin_db`` for speech at the level of the agent's echo at -12 dB), and passes.
    """

    MUTE = 0.01

    def __init__(
        self, rate: int, *, margin_db: float, spread_ms: int = 60, max_delay_ms: int = 600
    ) -> None:
        if not margin_db >= 0:
            raise ConfigError(f"the residual echo gate's margin must be >= 0 dB, not {margin_db}")
        self.frame = rate // 100
        self.margin = 10 ** (margin_db / 10)
        self.spread = spread_ms * rate // 1000
        self._energies = np.zeros((max_delay_ms * rate // 1000 + self.spread) // self.frame + 2)
        self.muted = 0
        """Frames muted so far."""

    def reference(self, frame: np.ndarray) -> None:
        """The next 10 ms of the agent's reference (the one that goes with the next caller's
        frame)."""
        self._energies = np.roll(self._energies, -1)
        self._energies[-1] = float(np.mean(np.square(frame.astype(np.float64))))

    def echo_only(self, mic: np.ndarray, delay: int, gain: float) -> bool:
        """Whether this 10 ms of the caller (int16, before the canceller) is no louder than the
        echo ``delay`` samples behind the latest reference frame, ``gain`` times it, could be."""
        newest = len(self._energies) - 1
        lo = max(0, newest - (delay + self.spread) // self.frame)
        hi = max(lo + 1, newest + 1 - max(0, delay - self.spread) // self.frame)
        loudest = gain * gain * float(np.max(self._energies[lo:hi]))
        energy = float(np.mean(np.square(mic.astype(np.float64))))
        return energy <= loudest * self.margin


class EchoCanceller:
    """One call's echo canceller, at one sample rate for both directions (the transport's).

    The agent's audio goes on a time line of samples (``rate`` per second of the clock), from
    when it was handed over or right after the audio before it; each 10 ms frame of the caller
    takes the 10 ms of that line it was recorded against as its reference. The line is read
    continuously, one frame per frame (the caller's audio arrives in bursts, the reference must
    not jump), and set back on the clock only when the two drift more than ``drift_ms`` apart.
    ``max_far_ms`` bounds how far ahead of the caller the agent's audio may be (the rest is
    dropped: it would be dropped later anyway). Not thread-safe; one per call.
    """

    def __init__(
        self,
        rate: int,
        *,
        max_far_ms: int = 2000,
        drift_ms: int = 40,
        suppress_margin_db: float | None = None,
        session_id: str = "-",
    ) -> None:
        if rate not in RATES:
            raise ConfigError(
                f"echo cancellation works at {', '.join(map(str, RATES))} Hz, not {rate} Hz"
            )
        self.rate = rate
        self.frame = rate // 100
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self.presence = EchoPresence(rate)
        self.gate = (
            None
            if suppress_margin_db is None
            else ResidualEchoGate(rate, margin_db=suppress_margin_db)
        )
        self._line = np.zeros(max_far_ms * rate // 1000 + 4 * self.frame, dtype=np.int16)
        self._written = 0  # absolute sample index one past the agent's audio on the line
        self._read: int | None = None  # absolute sample index of the next reference frame
        self._drift = drift_ms * rate // 1000
        self._near_carry = np.zeros(0, dtype=np.int16)
        self.dropped_ms = 0
        """Agent audio that was too far ahead of the caller's to be kept as the reference."""
        self._quiet = 0  # reference frames of silence in a row
        self._rest = (self.presence.max_delay + int(REST_MARGIN_S * rate)) // self.frame
        self.resting = 0
        """The caller's frames passed as they came: the agent had said nothing for longer than
        its echo takes to come back."""
        self.failed = False
        self.log = logging.LoggerAdapter(log, {"session": session_id})

    def far_end(self, samples: np.ndarray, at: float) -> None:
        """The agent's audio (int16 mono at :attr:`rate`) handed to the transport at clock
        time ``at``; it plays from then, or right after the audio before it."""
        start = max(round(at * self.rate), self._written)
        room = len(self._line) - (start - (self._read if self._read is not None else start))
        kept = samples[: max(0, room)].astype(np.int16, copy=False)
        self.dropped_ms += (len(samples) - len(kept)) * 1000 // self.rate
        index = (start + np.arange(len(kept))) % len(self._line)
        self._line[index] = kept
        self._written = start + len(kept)

    def near_end(self, samples: np.ndarray, at: float) -> np.ndarray:
        """The caller's audio that arrived at clock time ``at``, without the agent's echo.
        Returns whole 10 ms frames: a remainder waits for the next call."""
        audio = np.concatenate([self._near_carry, samples.astype(np.int16, copy=False)])
        whole = len(audio) - len(audio) % self.frame
        self._near_carry = audio[whole:]
        if self.failed:
            return audio[:whole]
        frames = whole // self.frame
        out = []
        for k in range(frames):
            frame = audio[k * self.frame : (k + 1) * self.frame]
            out.append(self._process(frame, at - (frames - 1 - k) * FRAME_S))
        return np.concatenate(out) if out else audio[:0]

    def _reference(self, at: float) -> np.ndarray:
        """The 10 ms of the agent's line that played while the frame ending at ``at`` was
        recorded (silence where nothing did); consumed, so the line can be reused."""
        due = round(at * self.rate) - self.frame
        if self._read is None or abs(self._read - due) > self._drift:
            if self._read is not None and self._read < due:  # skip what can no longer matter
                self._take(min(due - self._read, len(self._line)))
            self._read = due
            self._written = max(self._written, due)
        return self._take(self.frame)

    def _take(self, count: int) -> np.ndarray:
        assert self._read is not None
        index = (self._read + np.arange(count)) % len(self._line)
        out = self._line[index].copy()
        self._line[index] = 0
        self._read += count
        return out

    def _process(self, frame: np.ndarray, at: float) -> np.ndarray:
        reference = self._reference(at)
        if self.gate is not None:
            self.gate.reference(reference)
        was = self.presence.present
        self.presence.add(frame.astype(np.float64), reference.astype(np.float64))
        if self.presence.present != was:
            self.log.info(
                "%s (peak correlation %.2f)",
                "echo on the line: cancelling it" if not was else "no echo on the line",
                self.presence.correlation or 0.0,
            )
        self._quiet = 0 if reference.any() else self._quiet + 1
        if self._quiet > self._rest:  # no echo of the agent can still be on its way
            self.resting += 1
            return frame
        try:
            self._apm.process_reverse_stream(self._frame(reference))
            near = self._frame(frame)
            self._apm.process_stream(near)  # (always: it stays converged for when it is needed)
            if not self.presence.present:
                return frame
            out = np.frombuffer(bytes(near.data), dtype=np.int16).copy()
            return self._mute(out) if self._echo_only(frame) else out
        except Exception as exc:  # the native module's own errors: fail open, once
            self.failed = True
            self.log.warning(
                "echo cancellation failed (%s: %s); off for this call", type(exc).__name__, exc
            )
            return frame

    def _echo_only(self, frame: np.ndarray) -> bool:
        gate, delay, gain = self.gate, self.presence.delay, self.presence.gain
        if gate is None:
            return False
        return delay is not None and gain is not None and gate.echo_only(frame, delay, gain)

    def _mute(self, out: np.ndarray) -> np.ndarray:
        assert self.gate is not None
        self.gate.muted += 1
        return np.rint(out * self.gate.MUTE).astype(np.int16)

    def _frame(self, samples: np.ndarray) -> rtc.AudioFrame:
        return rtc.AudioFrame(samples.tobytes(), self.rate, 1, self.frame)
