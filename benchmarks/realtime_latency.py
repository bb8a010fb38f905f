"""Voice-to-voice latency of the realtime server, measured the way a caller experiences it.

A synthetic caller (espeak-ng, a voice other than the agent's) asks short questions over one
OpenAI Realtime session, streamed in real time in 20 ms chunks like a microphone, with real-time
silence in between. Per turn it measures, client-side, the time from sending the last chunk that
holds audible speech to receiving the first audible reply audio, and collects the server's own
stage breakdown (``x.voice.turn.metrics``), the user transcript and its WER, and the reply.

    python -m benchmarks.realtime_latency [--turns K] [--url ws://HOST:PORT/v1/realtime] [--out F]

Without ``--url`` it starts ``python -m voice serve`` on a free port, waits for ``READY`` and
also reports the server's resident memory (RSS, with child processes).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jiwer
import numpy as np
import psutil
import soxr
from openai import AsyncOpenAI

from benchmarks.local_server import LocalServer

RATE = 24_000
CHUNK_MS = 20
CHUNK_SAMPLES = RATE * CHUNK_MS // 1000
LOUD = 500
"""A sample louder than this (|x|, PCM16) counts as audible speech."""
MODEL = "voice-local"
CALLER_VOICE = ["-v", "en-us+m3", "-s", "165"]
TURN_TIMEOUT_S = 60.0
METRICS_GRACE_S = 5.0
PAUSE_S = 1.0
READY_TIMEOUT_S = 300.0
STAGES = ("turn_end", "asr_done", "llm_first_token", "tts_first_audio", "first_audio_sent")
RESULTS = Path(__file__).resolve().parent / "results"

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Can you recommend a good book for the weekend?",
    "Why is the sky blue?",
    "What should I cook for dinner tonight?",
    "Who wrote Romeo and Juliet?",
    "How do I make a cup of green tea?",
    "What is the tallest mountain in the world?",
    "Tell me a fun fact about octopuses.",
    "Is it going to be cold in winter in Canada?",
    "What is a good way to fall asleep faster?",
    "Which planet is closest to the sun?",
]

Event = dict[str, Any]


# ---------------------------------------------------------------- data


@dataclass(slots=True)
class Question:
    text: str
    audio: np.ndarray  # PCM16 mono, 24 kHz

    @property
    def seconds(self) -> float:
        return len(self.audio) / RATE


@dataclass(slots=True)
class TurnResult:
    index: int
    question: str
    speech_s: float
    missed: bool = True
    status: str | None = None
    voice_to_voice_ms: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    user_transcript: str = ""
    wer: float | None = None
    reply_transcript: str = ""
    responses: int = 0
    early_reply_audio: bool = False
    error: str | None = None


@dataclass(slots=True)
class MemoryReading:
    after_warm_up_mb: float | None = None
    after_run_mb: float | None = None
    peak_mb: float | None = None


# ---------------------------------------------------------------- caller audio


def speak(text: str, directory: Path, index: int) -> np.ndarray:
    """Synthesize one question with espeak-ng; PCM16 mono at 24 kHz."""
    path = directory / f"q{index:02d}.wav"
    subprocess.run(["espeak-ng", *CALLER_VOICE, "-w", str(path), text], check=True)
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise RuntimeError(f"espeak-ng wrote an unexpected format to {path}")
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    resampled = soxr.resample(samples.astype(np.float32), rate, RATE)
    return np.clip(np.round(resampled), -32768, 32767).astype(np.int16)


def make_questions(count: int, directory: Path) -> list[Question]:
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    return [Question(text, speak(text, directory, i)) for i, text in enumerate(texts)]


def is_loud(samples: np.ndarray) -> bool:
    return bool(samples.size) and int(np.abs(samples.astype(np.int32)).max()) > LOUD


def chunked(audio: np.ndarray) -> list[np.ndarray]:
    padded = np.zeros(-(-len(audio) // CHUNK_SAMPLES) * CHUNK_SAMPLES, dtype=np.int16)
    padded[: len(audio)] = audio
    return list(padded.reshape(-1, CHUNK_SAMPLES))


# ---------------------------------------------------------------- the server under test


def base_url_for(ws_url: str) -> str:
    """``ws://host:port/v1/realtime`` → ``http://host:port/v1`` (what the SDK expects)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/").removesuffix("/realtime") or "/v1"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


# ---------------------------------------------------------------- the caller


class Microphone:
    """Streams 20 ms chunks in real time: queued speech first, silence whenever there is none."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._queue: deque[tuple[np.ndarray, asyncio.Future[float] | None]] = deque()
        self._silence = np.zeros(CHUNK_SAMPLES, dtype=np.int16)

    def say(self, audio: np.ndarray) -> asyncio.Future[float]:
        """Queue speech; the future resolves to when its last audible chunk was sent."""
        chunks = chunked(audio)
        last_loud = max((i for i, c in enumerate(chunks) if is_loud(c)), default=len(chunks) - 1)
        marker: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        for i, chunk in enumerate(chunks):
            self._queue.append((chunk, marker if i == last_loud else None))
        return marker

    async def run(self) -> None:
        start = time.perf_counter()
        sent = 0
        while True:
            sent += 1
            delay = start + sent * CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk, marker = self._queue.popleft() if self._queue else (self._silence, None)
            audio = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
            await self._conn.input_audio_buffer.append(audio=audio)
            if marker is not None and not marker.done():
                marker.set_result(time.perf_counter())


def response_id_of(event: Event) -> str | None:
    response = event.get("response")
    if isinstance(response, dict):
        return response.get("id")
    return event.get("response_id")


@dataclass(slots=True)
class TurnObserver:
    """Follows the server events of one turn, until its response is done and measured."""

    speech_end: asyncio.Future[float]
    first_reply_audio: float | None = None
    early_audio: bool = False
    transcripts: list[str] = field(default_factory=list)
    reply: str = ""
    reply_deltas: list[str] = field(default_factory=list)
    responses: set[str] = field(default_factory=set)
    done_response: str | None = None
    status: str | None = None
    metrics: dict[str, float] | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.done_response is not None and self.metrics is not None

    def observe(self, event: Event, now: float) -> None:
        kind = event.get("type", "")
        if kind == "response.output_audio.delta":
            self._audio(event, now)
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.transcripts.append(event.get("transcript") or "")
        elif kind == "response.created":
            self.responses.add(response_id_of(event) or "")
        elif kind == "response.output_audio_transcript.delta":
            self.reply_deltas.append(event.get("delta") or "")
        elif kind == "response.output_audio_transcript.done":
            self.reply = event.get("transcript") or ""
        elif kind == "response.done":
            self._done(event)
        elif kind == "x.voice.turn.metrics":
            if response_id_of(event) == self.done_response:
                self.metrics = {k: float(v) for k, v in (event.get("metrics_ms") or {}).items()}
        elif kind == "error":
            self.errors.append(str((event.get("error") or {}).get("message")))

    def _audio(self, event: Event, now: float) -> None:
        if self.first_reply_audio is not None:
            return
        samples = np.frombuffer(base64.b64decode(event.get("delta") or ""), dtype="<i2")
        if not is_loud(samples):
            return
        if self.speech_end.done():
            self.first_reply_audio = now
        else:
            self.early_audio = True

    def _done(self, event: Event) -> None:
        status = (event.get("response") or {}).get("status")
        if status == "cancelled":  # e.g. the caller's own speech interrupted an early reply
            self.reply_deltas.clear()
            return
        self.done_response = response_id_of(event)
        self.status = status


def normalize(text: str) -> str:
    text = text.lower().replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


async def next_event(conn: Any, wait_s: float) -> tuple[Event, float]:
    """The next server event, parsed, with the time it was received."""
    raw = await asyncio.wait_for(conn.recv_bytes(), wait_s)
    return json.loads(raw), time.perf_counter()


async def observe_turn(conn: Any, observer: TurnObserver) -> None:
    deadline = time.perf_counter() + TURN_TIMEOUT_S
    while not observer.finished:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError
        event, now = await next_event(conn, remaining)
        observer.observe(event, now)
        if observer.done_response is not None:
            deadline = min(deadline, now + METRICS_GRACE_S)


async def drain(conn: Any, quiet_s: float = 2.0, limit_s: float = 15.0) -> None:
    """After a missed turn: cancel what is running and swallow its events."""
    with contextlib.suppress(Exception):
        await conn.response.cancel()
    end = time.perf_counter() + limit_s
    with contextlib.suppress(TimeoutError):
        while time.perf_counter() < end:
            await next_event(conn, quiet_s)


async def run_turn(conn: Any, mic: Microphone, index: int, question: Question) -> TurnResult:
    result = TurnResult(index, question.text, round(question.seconds, 3))
    observer = TurnObserver(mic.say(question.audio))
    try:
        await observe_turn(conn, observer)
    except TimeoutError:
        result.error = f"no finished response within {TURN_TIMEOUT_S:.0f} s"
    fill_result(result, observer)
    if result.missed:
        await drain(conn)
    return result


def fill_result(result: TurnResult, observer: TurnObserver) -> None:
    result.status = observer.status
    result.responses = len(observer.responses)
    result.early_reply_audio = observer.early_audio
    result.user_transcript = " ".join(t.strip() for t in observer.transcripts).strip()
    result.wer = word_error_rate(result.question, result.user_transcript)
    result.reply_transcript = (observer.reply or "".join(observer.reply_deltas)).strip()
    result.stages_ms = dict(observer.metrics or {})
    if observer.errors:
        result.error = "; ".join(filter(None, [result.error, *observer.errors]))
    speech_end = observer.speech_end.result() if observer.speech_end.done() else None
    if speech_end is not None and observer.first_reply_audio is not None:
        result.voice_to_voice_ms = round((observer.first_reply_audio - speech_end) * 1000, 1)
    result.missed = observer.status != "completed" or result.voice_to_voice_ms is None


async def sample_memory(server: LocalServer, memory: MemoryReading) -> None:
    while True:
        rss = await asyncio.to_thread(server.rss_mb)
        if rss is not None:
            memory.peak_mb = max(memory.peak_mb or 0.0, rss)
        await asyncio.sleep(1.0)


async def converse(url: str, questions: list[Question]) -> tuple[Event, list[TurnResult]]:
    """One session, the questions in turn; returns the session description and the results."""
    client = AsyncOpenAI(base_url=base_url_for(url), api_key="bench")
    results: list[TurnResult] = []
    async with client.realtime.connect(model=MODEL, max_retries=0) as conn:
        created, _ = await next_event(conn, 30.0)
        if created.get("type") != "session.created":
            raise RuntimeError(f"expected session.created, got {created.get('type')}")
        mic = Microphone(conn)
        streaming = asyncio.create_task(mic.run())
        try:
            await asyncio.sleep(PAUSE_S)
            for i, question in enumerate(questions):
                result = await run_turn(conn, mic, i, question)
                results.append(result)
                print_turn(result)
                await asyncio.sleep(PAUSE_S)
        finally:
            streaming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await streaming
    return created.get("session") or {}, results


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(arr, 50)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": round(float(arr.max()), 1),
        "mean": round(float(arr.mean()), 1),
    }


def summarize(results: list[TurnResult], memory: MemoryReading) -> dict[str, Any]:
    done = [r for r in results if not r.missed]
    v2v = [r.voice_to_voice_ms for r in done if r.voice_to_voice_ms is not None]
    stages = {
        name: percentiles([r.stages_ms[name] for r in done if name in r.stages_ms])
        for name in STAGES
    }
    wers = [r.wer for r in results if r.wer is not None]
    return {
        "turns": len(results),
        "missed": len(results) - len(done),
        "voice_to_voice_ms": percentiles(v2v),
        "stages_ms": stages,
        "mean_wer": round(float(np.mean(wers)), 3) if wers else None,
        "server_rss_mb": {k: _round(v) for k, v in dataclasses.asdict(memory).items()},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms(value: float | None) -> str:
    return "    -" if value is None else f"{value:5.0f}"


def print_turn(r: TurnResult) -> None:
    stages = " ".join(f"{k}={_ms(r.stages_ms.get(k)).strip()}" for k in STAGES)
    state = "MISSED " if r.missed else ""
    print(f"turn {r.index + 1}: {state}v2v={_ms(r.voice_to_voice_ms).strip()} ms  {stages}")
    print(f"  asked: {r.question!r}  heard: {r.user_transcript!r}  (WER {r.wer:.2f})")
    print(f"  reply: {r.reply_transcript!r}" + (f"  error: {r.error}" if r.error else ""))


def print_summary(machine: dict[str, Any], summary: dict[str, Any]) -> None:
    print("\n== realtime voice-to-voice latency ==")
    print(f"machine: {machine['cpu']}, {machine['usable_cores']}/{machine['cores']} cores usable,")
    print(f"         {machine['platform']}, Python {machine['python']}")
    v = summary["voice_to_voice_ms"]
    print(
        f"voice-to-voice (ms, last caller speech sent -> first reply audio received): "
        f"p50 {_ms(v['p50'])}  p95 {_ms(v['p95'])}  max {_ms(v['max'])}"
    )
    print("server stages (ms after the end of the caller's speech):")
    for name, stats in summary["stages_ms"].items():
        print(f"  {name:<17} p50 {_ms(stats['p50'])}  p95 {_ms(stats['p95'])}")
    wer = summary["mean_wer"]
    print(f"mean WER of the user transcripts: {'-' if wer is None else f'{wer:.3f}'}")
    print(f"missed turns: {summary['missed']} of {summary['turns']}")
    rss = summary["server_rss_mb"]
    if rss["after_warm_up_mb"] is not None:
        print(
            f"server RSS (MB): after warm-up {rss['after_warm_up_mb']:.0f}, "
            f"after run {rss['after_run_mb']:.0f}, peak {rss['peak_mb']:.0f}"
        )


def write_report(report: dict[str, Any], out: Path | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out or RESULTS / f"realtime_latency-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "realtime_latency-latest.json").write_text(text)
    return path


# ---------------------------------------------------------------- main


async def converse_with_local_server(
    questions: list[Question], workdir: Path, memory: MemoryReading
) -> tuple[str, Event, list[TurnResult]]:
    """Start the server, converse, read its memory after warm-up and after the run, stop it."""
    server = LocalServer({}, workdir / "server.log")
    sampler: asyncio.Task[None] | None = None
    try:
        print(f"starting the server on port {server.port} ...", flush=True)
        await asyncio.to_thread(server.wait_ready, READY_TIMEOUT_S)
        memory.after_warm_up_mb = server.rss_mb()
        sampler = asyncio.create_task(sample_memory(server, memory))
        session, results = await converse(server.url("realtime"), questions)
        memory.after_run_mb = server.rss_mb()
        memory.peak_mb = max(memory.peak_mb or 0.0, memory.after_run_mb or 0.0)
        return server.url("realtime"), session, results
    except BaseException:
        print(f"server log (last lines):\n{server.tail()}", file=sys.stderr)
        raise
    finally:
        if sampler is not None:
            sampler.cancel()
        server.stop()


async def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    questions = make_questions(args.turns, workdir)
    memory = MemoryReading()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    if args.url:
        url = args.url
        session, results = await converse(url, questions)
    else:
        url, session, results = await converse_with_local_server(questions, workdir, memory)
    return {
        "started_utc": started,
        "url": url,
        "machine": machine_info(),
        "settings": {
            "caller_voice": " ".join(CALLER_VOICE),
            "chunk_ms": CHUNK_MS,
            "loud_threshold": LOUD,
            "turn_timeout_s": TURN_TIMEOUT_S,
            "server_session": session,
        },
        "summary": summarize(results, memory),
        "turns": [dataclasses.asdict(r) for r in results],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.realtime_latency", description=__doc__
    )
    parser.add_argument("--turns", type=int, default=10, help="questions to ask (default 10)")
    parser.add_argument("--url", help="an already running server, ws://HOST:PORT/v1/realtime")
    parser.add_argument("--out", type=Path, help="the JSON report (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is needed to speak the questions (apt-get install espeak-ng)")
        return 2
    with tempfile.TemporaryDirectory(prefix="realtime-latency-") as tmp:
        report = asyncio.run(benchmark(args, Path(tmp)))
    print_summary(report["machine"], report["summary"])
    print(f"results: {write_report(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
