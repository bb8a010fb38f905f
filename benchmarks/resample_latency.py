"""How long the caller's audio waits in the input resampler before the VAD can hear it.

Every transport but a 16 kHz one resamples the caller's audio to the pipeline's 16 kHz chunk by
chunk (``pipeline.audio.Resampler``): Realtime clients send 24 kHz, Opus decodes to 48 kHz,
phones send 8 kHz. Whatever the resampler holds back, the VAD hears that much later, and so
places every end of speech and every barge-in's onset later. This streams espeak-ng speech in
20 ms chunks (a WebRTC frame, a Twilio media message) through soxr's stream (HQ, what the server
used) and through :class:`~pipeline.audio.Polyphase` (what it uses now), in the same process,
and reports per chunk: the audio held back (the input's duration so far minus the output's), the
CPU time, and how far the output is from soxr's whole-clip resampling (SNR over the whole band
and below 0.75 of the lower Nyquist frequency, 6 kHz for 16 kHz: Polyphase's transition band
starts lower, at 0.8 of it, where soxr's HQ starts at about 0.9).

    python -m benchmarks.resample_latency [--seconds S] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from benchmarks.harness.audio import espeak, espeak_available, load_speech
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import write_json
from benchmarks.harness.stats import describe
from pipeline.audio import Polyphase

CHUNK_MS = 20
BAND = 0.75
"""The band compared apart: below this fraction of the lower Nyquist frequency."""
RATIOS = ((24_000, 16_000), (48_000, 16_000), (8_000, 16_000), (16_000, 24_000))
TEXT = (
    "Please tell me a long story about a brave little dragon. Wait a moment, I have a question"
    " about the dragon. Which planet is closest to the sun? Thank you, goodbye."
)


def speech(rate: int, seconds: float) -> np.ndarray:
    clip = load_speech(espeak(TEXT, "en-us+m3"), rate)
    return np.resize(clip, int(seconds * rate)).astype(np.int16)


def stream(make: Any, audio: np.ndarray, rate_in: int, rate_out: int) -> dict[str, Any]:
    """``audio`` in 20 ms chunks through a fresh ``make()``: per chunk, the ms held back and the
    µs it took; the whole output."""
    resampler = make()
    chunk = rate_in * CHUNK_MS // 1000
    held, cpu, out = [], [], []
    n_in = n_out = 0
    for start in range(0, len(audio) - chunk + 1, chunk):
        t0 = time.perf_counter()
        y = resampler.resample_chunk(audio[start : start + chunk])
        cpu.append((time.perf_counter() - t0) * 1e6)
        n_in, n_out = n_in + chunk, n_out + len(y)
        held.append(1000 * (n_in / rate_in - n_out / rate_out))
        out.append(y)
    out.append(resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True))
    skip = 10  # the first chunks fill the filter
    return {"held_ms": held[skip:], "cpu_us": cpu[skip:], "out": np.concatenate(out)}


def snr_db(out: np.ndarray, reference: np.ndarray, rate: int, below_hz: float | None) -> float:
    """``out`` against ``reference``, over the whole band or below ``below_hz`` only (where
    the filters' different transition bands do not count)."""
    n = min(len(out), len(reference))
    ref, err = reference[:n].astype(float), out[:n].astype(float) - reference[:n]
    if below_hz is not None:
        keep = np.fft.rfftfreq(n, 1 / rate) < below_hz
        ref, err = (np.fft.irfft(np.fft.rfft(x) * keep, n) for x in (ref, err))
    return round(float(10 * np.log10(np.mean(ref**2) / max(np.mean(err**2), 1e-12))), 1)


def run(seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for rate_in, rate_out in RATIOS:
        audio = speech(rate_in, seconds)
        reference = soxr.resample(audio, rate_in, rate_out, quality="HQ")
        g = int(np.gcd(rate_in, rate_out))
        makers = {
            "soxr": functools.partial(
                soxr.ResampleStream, rate_in, rate_out, 1, dtype="int16", quality="HQ"
            ),
            "polyphase": functools.partial(Polyphase, rate_out // g, rate_in // g),
        }
        band_hz = BAND * min(rate_in, rate_out) / 2
        row = {}
        for name, make in makers.items():
            r = stream(make, audio, rate_in, rate_out)
            row[name] = {
                "held_ms": describe(r["held_ms"]),
                "cpu_us_per_chunk": describe(r["cpu_us"]),
                "snr_vs_whole_clip_db": snr_db(r["out"], reference, rate_out, None),
                "snr_in_band_db": snr_db(r["out"], reference, rate_out, band_hz),
            }
        results[f"{rate_in}->{rate_out}"] = row
    return results


def print_summary(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m.get('cpu')}, {m.get('usable_cores')} cores, Python {m.get('python')}")
    heads = ("ratio", "resampler", "held p50/p95/max ms", "µs/chunk p50/p95")
    print(f"{heads[0]:>13} {heads[1]:>10} {heads[2]:>22} {heads[3]:>17} SNR all / in band")
    for ratio, row in report["ratios"].items():
        for name, r in row.items():
            h, c = r["held_ms"], r["cpu_us_per_chunk"]
            held = f"{h['p50']:.1f} / {h['p95']:.1f} / {h['max']:.1f}"
            cpu = f"{c['p50']:.0f} / {c['p95']:.0f}"
            snr = f"{r['snr_vs_whole_clip_db']} / {r['snr_in_band_db']} dB"
            print(f"{ratio:>13} {name:>10} {held:>22} {cpu:>17} {snr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per ratio (60)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args()
    if not espeak_available():
        raise SystemExit("espeak-ng is needed to speak the sentences (apt-get install espeak-ng)")
    report = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"chunk_ms": CHUNK_MS, "seconds": args.seconds},
        "ratios": run(args.seconds),
    }
    print_summary(report)
    print(f"results: {write_json(report, 'resample_latency', args.out)}")


if __name__ == "__main__":
    main()
