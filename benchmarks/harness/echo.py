"""A caller on a speakerphone: ``voice bench --protocol twilio --echo 200:-12``.

The phone plays the agent's audio as it arrives (back to back, as Twilio's buffer does; a
``clear`` drops what has not played yet), and its microphone picks that audio up again
``delay_ms`` later and ``gain_db`` quieter, added to whatever the caller says; the sum goes out
μ-law coded like the rest of the line. An echo that cuts the agent off shows up in the report as
``cut_off_in_silence``: replies stopped while the caller said nothing.
"""

from __future__ import annotations

import argparse
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class EchoPath:
    delay_ms: int
    gain_db: float

    def describe(self) -> dict[str, float]:
        return {"delay_ms": self.delay_ms, "gain_db": self.gain_db}


def parse_echo(text: str) -> EchoPath:
    """``DELAY_MS:GAIN_DB`` (``200:-12``) → an :class:`EchoPath`; the gain must be below 0 dB."""
    try:
        delay, gain = text.split(":")
        path = EchoPath(int(delay), float(gain))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected DELAY_MS:GAIN_DB like 200:-12, got {text!r}"
        ) from None
    if not 0 <= path.delay_ms <= 2000 or not -60.0 <= path.gain_db < 0.0:
        raise argparse.ArgumentTypeError(
            f"echo delay 0-2000 ms and gain -60 to 0 dB (exclusive), got {text!r}"
        )
    return path


class Speakerphone:
    """What one phone played (on the wall clock, in samples at ``rate``) and hears back."""

    def __init__(self, path: EchoPath, rate: int, start: float) -> None:
        self.rate = rate
        self.delay = path.delay_ms * rate // 1000
        self.gain = 10 ** (path.gain_db / 20)
        self._start = start
        self._played: deque[tuple[int, np.ndarray]] = deque()  # (first sample, audio), in order
        self._next_free = 0

    def _index(self, t: float) -> int:
        return round((t - self._start) * self.rate)

    def play(self, audio: np.ndarray, now: float) -> None:
        """The agent's audio arrived at ``now``: it plays from then or after what is queued."""
        first = max(self._index(now), self._next_free)
        self._played.append((first, audio.astype(np.float64)))
        self._next_free = first + len(audio)

    def clear(self, now: float) -> None:
        """Drop what has not been played by ``now``."""
        cut = self._index(now)
        while self._played and self._played[-1][0] >= cut:
            self._played.pop()
        if self._played:
            first, audio = self._played[-1]
            self._played[-1] = (first, audio[: max(0, cut - first)])
        self._next_free = min(self._next_free, cut)

    def echo(self, samples: int, now: float) -> np.ndarray:
        """The echo in the ``samples`` the microphone recorded up to ``now``."""
        hi = self._index(now) - self.delay
        lo = hi - samples
        out = np.zeros(samples)
        while self._played and self._played[0][0] + len(self._played[0][1]) <= lo:
            self._played.popleft()  # heard back already: forget it
        for first, audio in self._played:
            if first >= hi:
                break
            a, b = max(lo, first), min(hi, first + len(audio))
            if b > a:
                out[a - lo : b - lo] = audio[a - first : b - first]
        return out * self.gain

    def mix(self, chunk: np.ndarray, now: float) -> np.ndarray:
        """The microphone's chunk (int16, sent at ``now``) with the echo added."""
        mixed = chunk.astype(np.float64) + self.echo(len(chunk), now)
        return np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
