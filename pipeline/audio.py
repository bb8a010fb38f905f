"""PCM helpers: int16 ⇄ float32, streaming resampling, loudness.

Inside the pipeline audio is mono ``int16`` numpy arrays; the input side runs at 16 kHz (what the
VAD and Whisper want), the output side at the transport's rate.
"""

from __future__ import annotations

import numpy as np
import soxr

from .errors import ProtocolError

PIPELINE_RATE = 16_000


def pcm16_from_bytes(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes → int16 array; odd lengths are a client error."""
    if len(data) % 2:
        raise ProtocolError(
            f"PCM16 audio must have an even number of bytes, got {len(data)}",
            code="invalid_audio",
        )
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


def pcm16_to_bytes(samples: np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf dB for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20.0 * np.log10(rms / 32768.0) if rms > 0 else float("-inf")


class Resampler:
    """A streaming resampler for one direction of one session (it keeps filter state).

    ``rate_in == rate_out`` is a pass-through. Call :meth:`flush` at the end of a stream to get the
    samples still held in the filter.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")
        )

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples.astype(np.int16, copy=False))

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)


def trim_leading_silence(
    samples: np.ndarray, rate: int, level: int = 100, keep_ms: int = 10
) -> np.ndarray:
    """``samples`` from ``keep_ms`` before the first one louder than ``level`` (about -50 dBFS);
    unchanged if none is."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    if not len(loud):
        return samples
    return samples[max(0, int(loud[0]) - keep_ms * rate // 1000) :]


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a whole clip (no state kept)."""
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples.astype(np.int16, copy=False), rate_in, rate_out, quality="HQ")
