"""Both sides of a call as WAV files, written by the store's writer thread.

``<folder>/<session id>/caller.wav`` holds the caller's audio as the session received it,
resampled to 16 kHz; ``agent.wav`` the agent's as it was sent, at the rate of its first reply
(a later reply at another rate is resampled to it). Each side is the audio itself, one chunk
after the other: the pauses between the agent's replies are not in ``agent.wav``. The header is
brought up to date after every chunk, so a file cut short by a crash still plays.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline.audio import PIPELINE_RATE, Resampler

CALLER, AGENT = "caller", "agent"


@dataclass(slots=True)
class _Track:
    file: BinaryIO
    wav: wave.Wave_write
    rate: int
    resampler: Resampler

    def write(self, samples: np.ndarray, rate: int) -> None:
        if rate != self.resampler.rate_in:  # what the filter still holds, then the new rate
            self._put(self.resampler.flush())
            self.resampler = Resampler(rate, self.rate)
        self._put(self.resampler.process(samples))

    def _put(self, pcm: np.ndarray) -> None:
        self.wav.writeframes(pcm.astype("<i2", copy=False).tobytes())
        self.file.flush()

    def close(self) -> None:
        try:
            self._put(self.resampler.flush())
            self.wav.close()
        finally:
            self.file.close()


class AudioFiles:
    """The open tracks of the sessions being recorded (only the writer thread uses it)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._tracks: dict[tuple[str, str], _Track] = {}

    def write(self, session_id: str, side: str, samples: np.ndarray, rate: int) -> None:
        """Raises :class:`OSError` when the file cannot be written."""
        track = self._tracks.get((session_id, side))
        if track is None:
            track = self._open(session_id, side, PIPELINE_RATE if side == CALLER else rate, rate)
        track.write(samples, rate)

    def close_session(self, session_id: str) -> None:
        for side in (CALLER, AGENT):
            track = self._tracks.pop((session_id, side), None)
            if track is not None:
                track.close()

    def close(self) -> None:
        for session_id, _ in list(self._tracks):
            self.close_session(session_id)

    def _open(self, session_id: str, side: str, rate: int, rate_in: int) -> _Track:
        folder = self.folder / session_id
        folder.mkdir(parents=True, exist_ok=True)
        file = (folder / f"{side}.wav").open("wb")
        wav = wave.open(file, "wb")  # noqa: SIM115 (closed by close_session)
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        track = _Track(file, wav, rate, Resampler(rate_in, rate))
        self._tracks[(session_id, side)] = track
        return track
