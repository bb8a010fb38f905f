"""PCM helpers: int16 ⇄ float32, streaming resampling, loudness.

Inside the pipeline audio is mono ``int16`` numpy arrays; the input side runs at 16 kHz (what the
VAD and Whisper want), the output side at the transport's rate.
"""

from __future__ import annotations

import math
from typing import Any

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

    ``rate_in == rate_out`` is a pass-through; a ratio of small whole numbers (the 8, 16, 24 and
    48 kHz of phones, the pipeline, Realtime clients and Opus) is :class:`Polyphase`'s, which
    returns every sample it can at once; other ratios are soxr's. Call :meth:`flush` at the end
    of a stream to get the samples still held in the filter.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._stream: soxr.ResampleStream | Polyphase | None = None
        g = math.gcd(rate_in, rate_out)
        up, down = rate_out // g, rate_in // g
        if rate_in != rate_out and max(up, down) <= Polyphase.MAX_FACTOR:
            self._stream = Polyphase(up, down)
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


class Polyphase:
    """Streaming resampling by ``up / down`` (whole numbers: 8 → 16 kHz is 2/1, 48 → 16 is 1/3,
    24 → 16 is 2/3): a polyphase Kaiser-windowed sinc, pass band to 0.9 of the lower Nyquist
    frequency, image and alias rejection about 80 dB.

    Each output sample comes out as soon as the input it needs is in: only the filter's half
    length is held back (0.5-3 ms) until the next chunk or :meth:`resample_chunk` with ``last``,
    and the output is delay-compensated like soxr's (input sample ``i`` is output sample
    ``i * up / down``). soxr's stream, by contrast, returns its output in blocks: it held about
    100 ms of 8 kHz audio, and 20-37 ms (22 on average) of 24 or 48 kHz audio going to 16 kHz,
    so the VAD heard every caller that much late.
    """

    MAX_FACTOR = 12
    TAPS = 48  # filter taps per phase, per unit of the larger factor's
    BETA = 8.0  # Kaiser window: ~80 dB stop band
    BLOCK = 4096  # output samples computed at a time (bounds the memory for a long chunk)

    def __init__(self, up: int, down: int = 1) -> None:
        if up < 1 or down < 1 or up == down or math.gcd(up, down) != 1:
            raise ValueError(f"resampling needs coprime whole factors, not both 1: {up}/{down}")
        self.up, self.down = up, down
        taps = max(up, down) * self.TAPS - 1  # odd: the delay is a whole intermediate sample
        t = np.arange(taps) - (taps - 1) / 2
        cutoff = 0.45 / max(up, down)  # cycles per sample at the intermediate rate (in * up)
        h = 2 * cutoff * np.sinc(2 * cutoff * t) * np.kaiser(taps, self.BETA)
        self.width = -(-taps // up)  # taps per phase
        h = np.append(h * up / h.sum(), np.zeros(self.width * up - taps))
        # phase p weighs inputs i_top, i_top - 1, …: stored oldest first, for a sliding window
        self._phases = np.stack([h[p::up][::-1] for p in range(up)]).astype(np.float32)
        self.delay = (taps - 1) // 2  # in intermediate samples
        self._x = np.zeros(self.width, dtype=np.float32)  # inputs from index self._x0 on
        self._x0 = -self.width  # (zeros before the stream starts)
        self._n_in = 0
        self._k = 0  # the next output sample's index

    def resample_chunk(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """``samples`` (int16) resampled; with ``last``, also the rest of the stream."""
        self._x = np.concatenate([self._x, samples.astype(np.float32)])
        self._n_in += len(samples)
        # output k needs input (k * down + delay) // up; with ``last``, zeros stand in after
        # the end, up to ceil(n_in * up / down) outputs in all
        if last:
            end = -(-self._n_in * self.up // self.down)
            short = max(0, self._top(end - 1) + 1 - self._n_in)
            self._x = np.concatenate([self._x, np.zeros(short, dtype=np.float32)])
        else:
            end = max(self._k, (self._n_in * self.up - 1 - self.delay) // self.down + 1)
        out = [self._compute(k, min(end, k + self.BLOCK)) for k in range(self._k, end, self.BLOCK)]
        self._k = end
        keep = min(self._top(end) - self.width + 1, self._n_in) - self._x0
        if keep > 0:
            self._x, self._x0 = self._x[keep:], self._x0 + keep
        if last:  # (the zeros that stood in after the end go)
            self._x = self._x[: self._n_in - self._x0]
        if not out:
            return np.zeros(0, dtype=np.int16)
        y = np.concatenate(out) if len(out) > 1 else out[0]
        return np.rint(y, out=y).clip(-32768, 32767, out=y).astype(np.int16)

    def _top(self, k: int | np.ndarray) -> Any:
        """The newest input that output ``k`` weighs."""
        return (k * self.down + self.delay) // self.up

    def _compute(self, first: int, end: int) -> np.ndarray:
        """Outputs ``first .. end - 1``. Those a multiple of ``up`` apart share a phase, and
        their inputs are ``down`` apart: each such class is one matrix of input windows (a
        strided view, copied contiguous for BLAS) times its phase's taps. (A gather of every
        output's window and a row-wise ``einsum`` cost five times as much per 20 ms chunk: a
        few % of a core per caller.)"""
        y = np.empty(end - first, dtype=np.float32)
        x, item = self._x, self._x.itemsize
        for r in range(min(self.up, end - first)):
            n = (first + r) * self.down + self.delay
            count = len(range(first + r, end, self.up))
            start = n // self.up - self.width + 1 - self._x0
            rows = np.ndarray(  # (numpy refuses a view past either end of ``x``)
                (count, self.width), np.float32, x, start * item, (self.down * item, item)
            )
            y[r :: self.up] = np.ascontiguousarray(rows) @ self._phases[n % self.up]
        return y


def trim_leading_silence(
    samples: np.ndarray, rate: int, level: int = 100, keep_ms: int = 2
) -> np.ndarray:
    """``samples`` from ``keep_ms`` before the first one louder than ``level`` (about -50 dBFS);
    unchanged if none is. What is cut is inaudible, and on a transport that plays in real time
    (WebRTC, Twilio, SIP) every millisecond kept delays the first sound: Piper's first word
    passes the page's "audible" (0.015) 0.3-16 ms after it passes ``level``."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    if not len(loud):
        return samples
    return samples[max(0, int(loud[0]) - keep_ms * rate // 1000) :]


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a whole clip (no state kept)."""
    if rate_in == rate_out:
        return samples
    return soxr.resample(samples.astype(np.int16, copy=False), rate_in, rate_out, quality="HQ")
