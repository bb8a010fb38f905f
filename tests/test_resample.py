"""The caller's audio reaches the VAD without waiting in the resampler: phone audio (8 kHz) is
upsampled chunk by chunk (soxr's stream held ~100 ms of it), and the filter is good enough
for the telephone band."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import Resampler, Upsampler

CHUNK = 160  # 20 ms at 8 kHz


def _stream(resampler: Resampler, audio: np.ndarray, chunk: int) -> list[np.ndarray]:
    return [resampler.process(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]


def _tone(freq: float, seconds: float = 1.0, rate: int = 8_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (10_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _level_db(audio: np.ndarray, freq: float, rate: int) -> float:
    """The level of ``freq`` in ``audio`` (Hann-windowed), in dB."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    bins = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(20 * np.log10(spectrum[np.argmin(np.abs(bins - freq))] + 1e-9))


def test_phone_audio_comes_out_chunk_by_chunk() -> None:
    out = _stream(Resampler(8_000, 16_000), np.zeros(CHUNK * 10, np.int16), CHUNK)
    # the first chunk lacks only the filter's half length (3 ms); every other is whole
    assert len(out[0]) >= 2 * CHUNK - 48
    assert [len(o) for o in out[1:]] == [2 * CHUNK] * 9


def test_delay_compensated_and_length_exact() -> None:
    audio = np.zeros(CHUNK * 20, np.int16)
    audio[800] = 20_000
    resampler = Resampler(8_000, 16_000)
    out = np.concatenate([*_stream(resampler, audio, CHUNK), resampler.flush()])
    assert len(out) == 2 * len(audio)
    assert int(np.argmax(np.abs(out))) == 1600  # sample i in is sample 2i out, as with soxr


@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_telephone_band_passes_and_images_are_rejected(freq: float) -> None:
    resampler = Resampler(8_000, 16_000)
    tone = _tone(freq)
    out = np.concatenate([*_stream(resampler, tone, CHUNK), resampler.flush()])[2000:14000]
    reference = _tone(freq, 1.0, 16_000)[2000:14000]
    gain = _level_db(out, freq, 16_000) - _level_db(reference, freq, 16_000)
    image = _level_db(out, 8_000 - freq, 16_000) - _level_db(out, freq, 16_000)
    assert abs(gain) < 0.3
    assert image < -70  # zero-stuffing alone leaves the image at 0 dB


def test_other_ratios_still_resample() -> None:
    out = np.concatenate(_stream(Resampler(24_000, 16_000), _tone(440, 1.0, 24_000), 480))
    assert abs(len(out) - 16_000) < 800  # soxr holds a little back until flush
    assert Resampler(16_000, 16_000).process(np.ones(5, np.int16)).tolist() == [1] * 5


def test_factor_must_be_a_whole_number_above_one() -> None:
    with pytest.raises(ValueError, match="upsampling factor"):
        Upsampler(1)
