"""The caller's audio reaches the VAD without waiting in the resampler: phone audio (8 kHz),
Realtime clients' (24 kHz) and Opus's (48 kHz) are resampled chunk by chunk (soxr's stream held
~100 ms of the first and 20-37 ms of the others), and the filter is good enough for speech."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import Polyphase, Resampler

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


@pytest.mark.parametrize(("rate_in", "chunk"), [(48_000, 960), (24_000, 480)])
def test_wide_band_audio_comes_out_chunk_by_chunk(rate_in: int, chunk: int) -> None:
    resampler = Resampler(rate_in, 16_000)
    out = _stream(resampler, np.zeros(chunk * 10, np.int16), chunk)
    assert len(out[0]) >= 320 - 24  # all but the filter's half length (1.5 ms)
    assert [len(o) for o in out[1:]] == [320] * 9
    assert len(resampler.flush()) == 320 - len(out[0])


@pytest.mark.parametrize("rate_in", [48_000, 24_000])
def test_downsampling_is_delay_compensated_and_exact_in_length(rate_in: int) -> None:
    audio = np.zeros(rate_in, np.int16)
    audio[rate_in // 10] = 20_000
    resampler = Resampler(rate_in, 16_000)
    chunks = _stream(resampler, audio, rate_in // 50)
    out = np.concatenate([*chunks, resampler.flush()])
    assert len(out) == 16_000
    assert int(np.argmax(np.abs(out))) == 1_600


@pytest.mark.parametrize("rate_in", [48_000, 24_000])
@pytest.mark.parametrize("freq", [300.0, 3000.0, 6000.0])
def test_speech_band_passes_and_aliases_are_rejected(rate_in: int, freq: float) -> None:
    tone = _tone(freq, 1.0, rate_in)
    resampler = Resampler(rate_in, 16_000)
    out = np.concatenate([*_stream(resampler, tone, rate_in // 50), resampler.flush()])
    reference = _tone(freq, 1.0, 16_000)
    gain = _level_db(out[2000:14000], freq, 16_000) - _level_db(reference[2000:14000], freq, 16_000)
    assert abs(gain) < 0.3
    # a tone above the new Nyquist frequency must not fold back into the band
    high = rate_in // 2 - 2000 if rate_in == 24_000 else 12_000
    folded = Resampler(rate_in, 16_000).process(_tone(high, 1.0, rate_in))[2000:14000]
    assert np.sqrt(np.mean(folded.astype(float) ** 2)) < 10_000 * 10 ** (-70 / 20)


def test_odd_ratios_and_long_chunks() -> None:
    # 44.1 kHz is not a ratio of small numbers: soxr's (which holds a little back until flush)
    resampler = Resampler(44_100, 16_000)
    out = np.concatenate([*_stream(resampler, _tone(440, 1.0, 44_100), 882), resampler.flush()])
    assert abs(len(out) - 16_000) <= 1
    # a chunk of many seconds at once is computed in blocks, with the same result
    tone = _tone(440, 3.0, 24_000)
    whole = Resampler(24_000, 16_000).process(tone)
    chunked = np.concatenate(_stream(Resampler(24_000, 16_000), tone, 480))
    assert np.array_equal(whole, chunked)
    assert Resampler(16_000, 16_000).process(np.ones(5, np.int16)).tolist() == [1] * 5


@pytest.mark.parametrize(("up", "down"), [(1, 1), (0, 3), (2, 4), (3, -1)])
def test_factors_must_be_coprime_whole_numbers(up: int, down: int) -> None:
    with pytest.raises(ValueError, match="coprime whole factors"):
        Polyphase(up, down)


def test_the_benchmark_compares_both_resamplers_on_speech() -> None:
    from benchmarks.harness.audio import espeak_available
    from benchmarks.resample_latency import run

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    ratios = run(seconds=2.0)
    assert set(ratios) == {"24000->16000", "48000->16000", "8000->16000", "16000->24000"}
    for row in ratios.values():
        # what the new one holds is the filter's half length, never a block
        assert row["polyphase"]["held_ms"]["max"] < 3.0 < row["soxr"]["held_ms"]["max"]
        assert row["polyphase"]["snr_in_band_db"] > 60


@pytest.mark.parametrize(
    ("rate_in", "rate_out"),
    [(24_000, 16_000), (48_000, 16_000), (8_000, 16_000), (16_000, 24_000), (16_000, 8_000)],
)
def test_the_stream_is_the_filter_computed_sample_by_sample(rate_in: int, rate_out: int) -> None:
    """Chunk by chunk, odd chunk sizes included, every output is the filter's sum at that
    sample (float64, written out plainly here) to within one step of rounding."""
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(rate_in // 2) * 6_000).clip(-32768, 32767).astype(np.int16)
    resampler = Resampler(rate_in, rate_out)
    poly = resampler._stream
    assert isinstance(poly, Polyphase)
    sizes = [rate_in // 50, 7, 1, rate_in // 100 + 3, 0, rate_in // 25]
    pieces, i, j = [], 0, 0
    while i < len(audio):
        pieces.append(resampler.process(audio[i : i + sizes[j % len(sizes)]]))
        i, j = i + sizes[j % len(sizes)], j + 1
    out = np.concatenate([*pieces, resampler.flush()])
    up, down, width = poly.up, poly.down, poly.width
    padded = np.concatenate([np.zeros(width), audio.astype(np.float64), np.zeros(width * 2)])
    expected = []
    for k in range(len(out)):
        n = k * down + poly.delay
        top = n // up + width  # (index in ``padded``)
        taps = poly._phases[n % up].astype(np.float64)
        expected.append(float(padded[top - width + 1 : top + 1] @ taps))
    assert np.abs(out - np.clip(np.rint(expected), -32768, 32767)).max() <= 1
