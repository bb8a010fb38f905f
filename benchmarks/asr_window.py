"""Whisper's encoder window: the full 30 s window against windows fitted to the utterance.

faster-whisper pads every utterance to Whisper's 30 s window; ``WhisperOptions.fit_window`` runs
the encoder on the utterance plus ``window_pad_s`` of silence instead (``pipeline/engines/
asr_whisper.py``). This transcribes the same short conversational sentences with tiny.en in both
ways and compares the time of ``transcribe_blocking`` and the word error rate.

    python -m benchmarks.asr_window [--pads 3,5,7] [--beams 1,5] [--out DIR]

``--beams``: the fitted windows also with these beam sizes (greedy decoding is 1, the server's
``asr.beam_size``), to weigh a wider search's words against its time.

Each sentence is spoken by espeak-ng in three voices, at 16 kHz with 0.1 s of silence before and
after (the server's VAD margins). Every engine is warmed up, then each item goes through every
variant in turn, so that all of them meet the same conditions.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.audio import espeak, espeak_available, load_speech
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import write_json
from benchmarks.harness.stats import corpus_wer, describe, ratio
from benchmarks.harness.timeline import wer
from pipeline.engines.asr_whisper import WhisperAsr, WhisperOptions
from voice.models import whisper_tiny_en

RATE = 16_000
MARGIN_S = 0.1
"""Silence before and after the speech, like the server's VAD margins."""
VOICES = ("en-us+m3", "en-us+f3", "en+m7")
FULL = "full"

SENTENCES = (
    "Hello.",
    "Yes please.",
    "No thanks.",
    "Sure.",
    "Tell me a joke.",
    "Why is the sky blue?",
    "Thank you, goodbye.",
    "Stop, wait a moment.",
    "Is it going to rain tomorrow?",
    "Good morning, how are you?",
    "Can you repeat that, please?",
    "I am not sure what you mean.",
    "That sounds great, thank you.",
    "What is the capital of France?",
    "What time does the museum open?",
    "Which planet is closest to the sun?",
    "How many legs does a spider have?",
    "Could you speak a little more slowly?",
    "My flight leaves early in the morning.",
    "What should I cook for dinner tonight?",
    "I need directions to the train station.",
    "Please turn off the lights in the kitchen.",
    "I would like to book a table for tonight.",
    "Can you recommend a good book for the weekend?",
)


@dataclass(slots=True)
class Item:
    text: str
    voice: str
    audio: np.ndarray  # PCM16 mono, 16 kHz, with the margins

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


@dataclass(slots=True)
class Variant:
    name: str
    pad_s: float | None
    """``None``: the full 30 s window."""
    beam: int
    engine: WhisperAsr
    ms: list[float] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    fell_back: list[bool] = field(default_factory=list)


def make_items() -> list[Item]:
    margin = np.zeros(int(MARGIN_S * RATE), dtype=np.int16)
    items = []
    for text in SENTENCES:
        for voice in VOICES:
            speech = load_speech(espeak(text, voice), RATE)
            items.append(Item(text, voice, np.concatenate([margin, speech, margin])))
    return items


def make_variants(pads: list[float], beams: list[int] | None = None) -> list[Variant]:
    """The full window (greedy), then each fitted pad with each beam size."""
    model = whisper_tiny_en()
    full = WhisperAsr(WhisperOptions(model=model, fit_window=False))
    variants = [Variant(FULL, None, 1, full)]
    for pad in pads:
        for beam in beams or [1]:
            options = WhisperOptions(model=model, fit_window=True, window_pad_s=pad, beam_size=beam)
            name = f"fit+{pad:g}s" + (f"/b{beam}" if beam != 1 else "")
            variants.append(Variant(name, pad, beam, WhisperAsr(options)))
    return variants


def run(items: list[Item], variants: list[Variant]) -> None:
    for variant in variants:
        variant.engine.warm_up()
    for index, item in enumerate(items):
        for variant in variants:
            before = variant.engine.fallbacks
            start = time.perf_counter()
            text = variant.engine.transcribe_blocking(item.audio)
            variant.ms.append((time.perf_counter() - start) * 1000)
            variant.transcripts.append(text)
            variant.fell_back.append(variant.engine.fallbacks > before)
        heard = "  ".join(f"{v.name}={v.transcripts[-1]!r} {v.ms[-1]:.0f}ms" for v in variants)
        print(f"{index + 1:3d} {item.voice:<9} {item.text!r}: {heard}", flush=True)


def summarize(items: list[Item], variants: list[Variant]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    full_p50 = _num(describe(variants[0].ms)["p50"])
    for variant in variants:
        wers = [wer(item.text, text) for item, text in zip(items, variant.transcripts, strict=True)]
        errors = sum(1 for w in wers if w)
        stats = describe(variant.ms)
        out[variant.name] = {
            "window_pad_s": variant.pad_s,
            "beam_size": variant.beam,
            "ms": stats,
            "corpus_wer": corpus_wer(
                (item.text, text) for item, text in zip(items, variant.transcripts, strict=True)
            ),
            "items_with_errors": errors,
            "error_rate": round(errors / len(items), 4) if items else None,
            "fallbacks": sum(variant.fell_back),
            "p50_full_over_this": ratio(_num(stats["p50"]), full_p50),
        }
    return out


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: object, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_summary(report: dict[str, Any]) -> None:
    machine = report["machine"]
    summary: dict[str, Any] = report["summary"]
    n = report["settings"]["items"]
    print(f"\n== Whisper's encoder window (tiny.en, {n} items, transcribe_blocking) ==")
    print(f"machine: {machine['cpu']}, {machine['usable_cores']}/{machine['cores']} cores usable,")
    print(f"         {machine['platform']}, Python {machine['python']}")
    print(
        f"{'variant':<10} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'WER':>7} "
        f"{'errors':>9} {'fallbacks':>9} {'full/this p50':>13}"
    )
    for name, s in summary.items():
        errors = f"{s['items_with_errors']}/{n}"
        fallbacks = "-" if s["window_pad_s"] is None else str(s["fallbacks"])
        print(
            f"{name:<10} {_fmt(s['ms']['p50']):>7} {_fmt(s['ms']['p95']):>7} "
            f"{_fmt(s['ms']['max']):>7} {_fmt(s['corpus_wer'], '.3f'):>7} {errors:>9} "
            f"{fallbacks:>9} {_fmt(s['p50_full_over_this'], '.2f') + 'x':>13}"
        )


def benchmark(pads: list[float], beams: list[int] | None = None) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"speaking {len(SENTENCES)} sentences in {len(VOICES)} voices ...", flush=True)
    items = make_items()
    variants = make_variants(pads, beams)
    run(items, variants)
    return {
        "started_utc": started,
        "machine": machine_info(),
        "settings": {
            "model": "tiny.en",
            "device": variants[0].engine.options.device,
            "compute_type": variants[0].engine.compute_type,
            "cpu_threads": variants[0].engine.options.cpu_threads,
            "beam_sizes": sorted({v.beam for v in variants}),
            "voices": list(VOICES),
            "sentences": len(SENTENCES),
            "items": len(items),
            "margin_s": MARGIN_S,
            "rate": RATE,
            "variants": {
                v.name: {
                    "fit_window": v.pad_s is not None,
                    "window_pad_s": v.pad_s,
                    "beam_size": v.beam,
                }
                for v in variants
            },
        },
        "summary": summarize(items, variants),
        "items": [
            {
                "text": item.text,
                "voice": item.voice,
                "audio_s": round(item.seconds, 3),
                "results": {
                    v.name: {
                        "transcript": v.transcripts[i],
                        "ms": round(v.ms[i], 1),
                        "wer": wer(item.text, v.transcripts[i]),
                        "fallback": v.fell_back[i],
                    }
                    for v in variants
                },
            }
            for i, item in enumerate(items)
        ],
    }


def parse_pads(value: str) -> list[float]:
    try:
        pads = [float(p) for p in value.split(",") if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {value!r}") from exc
    if not pads or any(not 0.5 <= p <= 20 for p in pads):
        raise argparse.ArgumentTypeError(f"pads must be 0.5..20 s, got {value!r}")
    return list(dict.fromkeys(pads))


def parse_beams(value: str) -> list[int]:
    try:
        beams = [int(b) for b in value.split(",") if b.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of beam sizes: {value!r}") from exc
    if not beams or any(not 1 <= b <= 10 for b in beams):
        raise argparse.ArgumentTypeError(f"beam sizes must be 1..10, got {value!r}")
    return list(dict.fromkeys(beams))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.asr_window", description=__doc__)
    parser.add_argument(
        "--pads",
        type=parse_pads,
        default=[5.0],
        help="window_pad_s of the fitted variants, a comma list of seconds (default 5)",
    )
    parser.add_argument(
        "--beams",
        type=parse_beams,
        default=[1],
        help="beam sizes of the fitted variants, a comma list (default 1: greedy)",
    )
    parser.add_argument("--out", type=Path, help="folder for the JSON (default benchmarks/results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not espeak_available():
        print("espeak-ng is needed to speak the sentences (apt-get install espeak-ng)")
        return 2
    report = benchmark(args.pads, args.beams)
    print_summary(report)
    print(f"results: {write_json(report, 'asr_window', args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
