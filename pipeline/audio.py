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


def levels_dbfs(rows: np.ndarray) -> list[float]:
    """The root-mean-square level of each row of ``rows`` (shape ``(n, samples)``), in dB
    relative to full scale (-inf for a row of digital silence)."""
    power = np.mean(np.square(rows.astype(np.float64)), axis=1)
    with np.errstate(divide="ignore"):
        return (10.0 * np.log10(power / 32768.0**2)).tolist()


class Resampler:
    """A streaming resampler for one direction of one session (it keeps filter state).

    ``rate_in == rate_out`` is a pass-through; a whole-number upsampling (8 → 16 kHz, phone audio)
    is :class:`Upsampler`'s, which returns every chunk at once; other ratios are soxr's. Call
    :meth:`flush` at the end of a stream to get the samples still held in the filter.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream: soxr.ResampleStream | Upsampler | None = None
        if rate_in != rate_out and rate_out % rate_in == 0:
            self._stream = Upsampler(rate_out // rate_in)
        elif rate_in != rate_out:
            self._stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples.astype(np.int16, copy=False))

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)


class Upsampler:
    """Streaming upsampling by a whole number: a polyphase Kaiser-windowed sinc (pass band to
    0.9 of the input's Nyquist frequency, image rejection about 80 dB).

    Every chunk comes out at once, delay-compensated like soxr's (sample ``i`` in is sample
    ``i * factor`` out; the filter's half length, 3 ms at 8 → 16 kHz, is held back until the
    next chunk or :meth:`resample_chunk` with ``last``). soxr's stream, by contrast, holds about
    100 ms of 8 kHz audio before it returns anything, and a phone caller's barge-in waited for it.
    """

    TAPS_PER_PHASE = 48
    BETA = 8.0  # Kaiser window: ~80 dB stop band

    def __init__(self, factor: int) -> None:
        if factor < 2:
            raise ValueError(f"an upsampling factor is a whole number >= 2, got {factor}")
        self.factor = factor
        taps = factor * self.TAPS_PER_PHASE - 1  # odd: the delay is a whole output sample
        t = np.arange(taps) - (taps - 1) / 2
        cutoff = 0.45 / factor  # cycles per output sample
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(taps, self.BETA)
        h = np.append(h * factor / h.sum(), 0.0)
        self._phases = [h[p::factor] for p in range(factor)]
        self.delay = (taps - 1) // 2
        self._history = np.zeros(self.TAPS_PER_PHASE - 1)
        self._skip = self.delay  # output samples still to drop (the filter's delay)
        self._owed = 0  # output samples owed for the input so far (in * factor - out)

    def resample_chunk(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """``samples`` (int16) upsampled; with ``last``, also the rest of the stream."""
        out = self._filter(samples.astype(np.float64))
        self._owed += len(samples) * self.factor - len(out)
        if last and self._owed > 0:
            tail = self._filter(np.zeros(-(-self._owed // self.factor)))[: self._owed]
            out = np.concatenate([out, tail])
            self._owed = 0
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)

    def _filter(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0)
        padded = np.concatenate([self._history, x])
        self._history = padded[len(padded) - len(self._history) :]
        phases = [np.convolve(padded, phase, mode="valid") for phase in self._phases]
        out = np.stack(phases, axis=1).reshape(-1)
        skip, self._skip = min(self._skip, len(out)), self._skip - min(self._skip, len(out))
        return out[skip:]


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
