"""The caller's audio at 16 kHz on one absolute time line (sample 0 = session start).

Holds the audio of the turn in progress (and a little before it, for prefix padding); everything
older is trimmed. Also remembers when each chunk arrived on the clock, so the metrics can say
when the last word of a turn actually reached the server.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .audio import PIPELINE_RATE


class InputBuffer:
    def __init__(self, arrivals_kept: int = 512) -> None:
        self._chunks: list[np.ndarray] = []
        self.start = 0  # absolute index of the first sample held
        self.end = 0  # absolute index one past the last sample received
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=arrivals_kept)

    def __len__(self) -> int:
        return self.end - self.start

    def duration(self) -> float:
        return len(self) / PIPELINE_RATE

    def append(self, samples: np.ndarray, arrived: float) -> None:
        if samples.size == 0:
            return
        self._chunks.append(samples)
        self.end += len(samples)
        self._arrivals.append((self.end, arrived))

    def slice(self, start: int, end: int) -> np.ndarray:
        """Samples in ``[start, end)`` (clamped to what is held)."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.int16)
        data = self._joined()
        return data[start - self.start : end - self.start].copy()

    def trim_before(self, index: int) -> None:
        index = min(max(index, self.start), self.end)
        if index == self.start:
            return
        data = self._joined()
        self._chunks = [data[index - self.start :]]
        self.start = index

    def clear(self) -> None:
        self.trim_before(self.end)

    def arrival_of(self, index: int) -> float | None:
        """Clock time at which sample ``index`` arrived (None if forgotten)."""
        for end, arrived in self._arrivals:
            if index < end:
                return arrived
        return self._arrivals[-1][1] if self._arrivals else None

    def _joined(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [
                np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
            ]
        return self._chunks[0]
