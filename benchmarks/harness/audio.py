"""Caller audio: espeak-ng speech (cached on disk), WAV files, loudness, 20 ms chunks.

Everything here is PCM16 mono ``int16`` numpy arrays. A sample counts as *audible* when its
magnitude is above :data:`LOUD` (500, about -36 dBFS; the web client's 0.015 is the same); the
latency marks of the harness are the chunks holding the first or last audible sample.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import soxr

LOUD = 500
"""|sample| above this (PCM16) is audible speech."""
TRIM = 64
"""Leading and trailing samples quieter than this are cut from a spoken segment."""
TRIM_MARGIN_MS = 10
CHUNK_MS = 20
DEFAULT_WPM = 165
CACHE_DIR = Path(tempfile.gettempdir()) / "voice-bench-speech"


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return samples.astype(np.int16, copy=False)
    return to_int16(soxr.resample(samples.astype(np.float32), rate_in, rate_out, quality="HQ"))


def loud_indices(samples: np.ndarray, threshold: int = LOUD) -> np.ndarray:
    return np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)


def first_loud(samples: np.ndarray, threshold: int = LOUD) -> int | None:
    """Index of the first audible sample, or None."""
    idx = loud_indices(samples, threshold)
    return int(idx[0]) if idx.size else None


def last_loud(samples: np.ndarray, threshold: int = LOUD) -> int | None:
    """Index of the last audible sample, or None."""
    idx = loud_indices(samples, threshold)
    return int(idx[-1]) if idx.size else None


def is_loud(samples: np.ndarray, threshold: int = LOUD) -> bool:
    return bool(samples.size) and int(np.abs(samples.astype(np.int32)).max()) > threshold


def trim(samples: np.ndarray, rate: int, threshold: int = TRIM) -> np.ndarray:
    """Cut leading and trailing near-silence (keeping a few ms), so pauses are exactly scripted."""
    idx = loud_indices(samples, threshold)
    if not idx.size:
        return samples[:0]
    margin = rate * TRIM_MARGIN_MS // 1000
    return samples[max(0, int(idx[0]) - margin) : int(idx[-1]) + 1 + margin]


def chunk_samples(rate: int) -> int:
    return rate * CHUNK_MS // 1000


def chunked(audio: np.ndarray, size: int) -> list[np.ndarray]:
    """Whole chunks of ``size`` samples; the last one is padded with silence."""
    if not len(audio):
        return []
    padded = np.zeros(-(-len(audio) // size) * size, dtype=np.int16)
    padded[: len(audio)] = audio
    return list(padded.reshape(-1, size))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV file as mono int16 (channels averaged) and its rate."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        data = to_int16(data.reshape(-1, channels).astype(np.float32).mean(axis=1))
    return data.astype(np.int16), rate


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, voice: str, wpm: int = DEFAULT_WPM, cache: Path = CACHE_DIR) -> Path:
    """``text`` spoken by espeak-ng in ``voice``: a WAV file, made once and kept in ``cache``."""
    key = hashlib.sha1(f"{voice}\0{wpm}\0{text}".encode()).hexdigest()[:16]
    path = cache / f"{key}.wav"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(tmp), text],
            check=True,
            timeout=60,
            capture_output=True,
        )
        tmp.replace(path)
    return path


def load_speech(path: Path, rate: int) -> np.ndarray:
    """A WAV file at ``rate``, trimmed of leading and trailing silence."""
    samples, source_rate = read_wav(path)
    return trim(resample(samples, source_rate, rate), rate)
