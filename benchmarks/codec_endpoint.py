"""How much later the server ends a caller's turn when their audio comes through Opus, as a
browser's does, than when it comes as the harness's WebSocket caller sends it.

The Chromium benchmark (``webrtc_latency``) compares a page against the harness's WebSocket
caller in the same run; part of what it finds between them is the audio itself, not the
transport. The WebSocket caller sends espeak-ng speech with digital silence (exact zeros) after
the last word; a browser's audio reaches the server through Opus, whose decoded silence is a
least-significant bit or two of noise and whose speech comes a few ms late (the codec's look-ahead
and the resampling). Silero's speech probability falls more slowly on that noise than on zeros,
so the VAD finds the end of speech later, and the turn ends later with it.

This feeds the same questions, in real time on the wall clock, to fresh sessions of one server
(the default configuration and embedded models, no network) in three forms, in turn:

- ``raw``: 24 kHz PCM as the harness's WebSocket caller sends it;
- ``floor``: the same with a noise floor of ±1 LSB, as any captured audio has;
- ``opus``: 48 kHz through libopus and back (``--bit-rate``, ``--frame-ms``; libwebrtc's
  defaults for a mono voice: VoIP mode, 32 kbit/s), as the server hears a browser.

For each turn: from when the last audible sample (peak above 500) was due to the server's end of
turn (``input_audio_buffer.speech_stopped``), and the VAD's end of speech against that sample on
the audio time line. Printed as p50/p95 per form and per turn against ``raw``; JSON under
``benchmarks/results/``.

    python -m benchmarks.codec_endpoint [--turns K] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from av import AudioFrame, CodecContext

from benchmarks.harness.clients import REALTIME_RATE
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import write_json
from benchmarks.harness.scenarios import Renderer, questions
from benchmarks.harness.stats import describe
from pipeline import messages as m
from pipeline.audio import resample
from pipeline.session import Session
from transports.webrtc import RATE as OPUS_RATE
from transports.webrtc import OpusFrames
from voice.config import load
from voice.engines import close_engines, load_engines, warm_up
from voice.server import VoiceServer

NAME = "codec_endpoint"
CHUNK_MS = 20
LOUD = 500
LEAD_S = 0.6
TAIL_S = 2.5
FORMS = ("raw", "floor", "opus")


def opus_round_trip(audio: np.ndarray, rate: int, bit_rate: int, frame_ms: int) -> np.ndarray:
    """``audio`` at 48 kHz through a libopus encoder (VoIP mode) and decoder, as int16."""
    pcm = resample(audio, rate, OPUS_RATE)
    size = OPUS_RATE * frame_ms // 1000
    encoder = OpusFrames(size, application="voip", bit_rate=bit_rate)
    decoder = CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.layout, decoder.format = OPUS_RATE, "mono", "s16"
    decoder.open()
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % size, np.int16)])
    out = []
    for start in range(0, len(pcm), size):
        frame = AudioFrame.from_ndarray(
            pcm[start : start + size].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = OPUS_RATE, start
        packet = encoder.encode(frame)
        out += [d.to_ndarray().reshape(-1).astype(np.int16) for d in decoder.decode(packet)]
    return np.concatenate(out)


def forms(speech: np.ndarray, bit_rate: int, frame_ms: int) -> dict[str, tuple[np.ndarray, int]]:
    """The question as each form sends it, with the lead and tail of silence: (audio, rate)."""
    rate = REALTIME_RATE
    clip = np.concatenate(
        [np.zeros(int(LEAD_S * rate), np.int16), speech, np.zeros(int(TAIL_S * rate), np.int16)]
    )
    noise = np.random.default_rng(len(speech)).integers(-1, 2, len(clip))
    floor = np.clip(clip.astype(np.int32) + noise, -32768, 32767).astype(np.int16)
    return {
        "raw": (clip, rate),
        "floor": (floor, rate),
        "opus": (opus_round_trip(clip, rate, bit_rate, frame_ms), OPUS_RATE),
    }


async def one_turn(session: Session, audio: np.ndarray, rate: int, last_s: float) -> dict[str, Any]:
    """Stream ``audio`` in real time; the turn's end against the last audible sample's time."""
    events: list[tuple[float, Any]] = []

    async def collect() -> None:
        while True:
            event = await session.next_event()
            events.append((time.perf_counter(), event))

    tasks = [asyncio.create_task(session.run()), asyncio.create_task(collect())]
    chunk = rate * CHUNK_MS // 1000
    started = time.perf_counter()
    try:
        for start in range(0, len(audio), chunk):
            await asyncio.sleep(max(0.0, started + start / rate - time.perf_counter()))
            session.append_audio(audio[start : start + chunk], rate)
            if any(isinstance(e, m.SpeechStopped) for _, e in events):
                break
    finally:
        session.close("turn measured")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stopped = [(t, e) for t, e in events if isinstance(e, m.SpeechStopped)]
    if not stopped:
        return {"turn_end_ms": None, "vad_end_ms": None}
    at, event = stopped[0]
    return {
        "turn_end_ms": round((at - started - last_s) * 1000, 1),
        "vad_end_ms": round(event.audio_end_ms - last_s * 1000, 1),
    }


def last_audible_s(audio: np.ndarray, rate: int) -> float:
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > LOUD)
    return float(loud[-1] + 1) / rate if loud.size else 0.0


async def measure(turns: int, bit_rate: int, frame_ms: int) -> dict[str, Any]:
    config = load(env={}, overrides={"server.port": "0"})
    loaded = load_engines(config)
    warm_up(loaded.engines, config.pipeline.instructions)  # as the server does
    server = VoiceServer(config, loaded.engines)
    rendered = Renderer(REALTIME_RATE).render(questions(turns))
    records = []
    try:
        for k, turn in enumerate(rendered.turns):
            speech = np.concatenate(turn.segments)
            last_s = LEAD_S + last_audible_s(speech, REALTIME_RATE)
            record: dict[str, Any] = {"index": k, "text": turn.script.segments[0].text}
            sent = forms(speech, bit_rate, frame_ms)
            for name in FORMS[k % len(FORMS) :] + FORMS[: k % len(FORMS)]:  # each first in turn
                audio, rate = sent[name]
                record[name] = await one_turn(server.new_session(), audio, rate, last_s)
            records.append(record)
            print(k, {n: record[n] for n in FORMS}, flush=True)
    finally:
        close_engines(loaded.engines)
    summary: dict[str, Any] = {}
    for name in FORMS:
        for what in ("turn_end_ms", "vad_end_ms"):
            summary[f"{name}_{what}"] = describe(r[name][what] for r in records)
            if name != "raw":
                summary[f"{name}_minus_raw_{what}"] = describe(
                    None if r[name][what] is None or r["raw"][what] is None
                    else r[name][what] - r["raw"][what]
                    for r in records
                )  # fmt: skip
    return {"summary": summary, "turns": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--bit-rate", type=int, default=32_000)
    parser.add_argument("--frame-ms", type=int, default=20, choices=(10, 20, 40, 60))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"turns": args.turns, "bit_rate": args.bit_rate, "frame_ms": args.frame_ms},
    }
    report.update(asyncio.run(measure(args.turns, args.bit_rate, args.frame_ms)))
    machine = report["machine"]
    print(f"\n{NAME} on {machine['cpu']} ({machine['usable_cores']} cores), {args.turns} turns")
    print(f"{'':28s} {'p50':>7s} {'p95':>7s}")
    for key, stats in report["summary"].items():
        print(f"{key:28s} {stats['p50']!s:>7s} {stats['p95']!s:>7s}")
    print(f"wrote {write_json(report, NAME, args.out)}")


if __name__ == "__main__":
    main()
