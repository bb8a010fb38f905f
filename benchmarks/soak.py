"""Soak: several synthetic callers talk to an in-process server with the real embedded models for
a bounded time — turns, pauses, barge-ins, hang-ups mid-reply (with and without a close frame)
and reconnects — while the server's resident memory, open file descriptors, threads, asyncio
tasks and live sessions are sampled. Does anything grow without bound?

    .venv/bin/python -m benchmarks.soak                       # 10 minutes, 3 callers
    .venv/bin/python -m benchmarks.soak --minutes 2 --callers 2 --tracemalloc

Each caller (the harness's Realtime caller, ``benchmarks/harness``) runs one default scenario
per connection, then asks one more question and leaves once the reply is audible: every other
time it vanishes (the socket aborted, no close frame), otherwise it closes cleanly; then it
reconnects with the next scenario. The server and the callers share one process and one event
loop, so the task count includes the callers' own (two per connection).

Writes ``benchmarks/results/soak-<UTC>.json`` (and ``soak-latest.json``) with every sample and
turn, and ``soak-<UTC>.svg`` (the samples over time); prints p50/p95 voice-to-voice and the
slope of RSS over the last half of the run (MB/min). At the middle and the end it counts the
live objects by type (``gc``) and, with ``--tracemalloc``, compares Python allocations between
those two points; at the end it also reports RSS after ``malloc_trim(0)`` (memory glibc kept
but the program had freed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import html
import logging
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import websockets

from benchmarks.harness.clients import REALTIME_RATE, Call, open_call
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import write_json
from benchmarks.harness.runner import TimeUp, Timing, TurnDriver, failed_record, turn_record
from benchmarks.harness.scenarios import DEFAULT_SCENARIOS, RenderedScenario, RenderedTurn, Renderer
from benchmarks.harness.stats import describe
from benchmarks.harness.timeline import REALTIME, TurnClock

NAME = "soak"
WATCHED_TYPES = ("Session", "ReplyHandle", "Reply", "Playout", "RealtimeConnection", "Listener")
"""Per-session objects whose live count should fall back once the sessions end."""
Keep = Callable[[dict[str, Any]], None]


def _now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------- samples and their figures


@dataclass(slots=True)
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    sessions: int
    ended_kept: int
    turns: int


def take_sample(started: float, sessions: int, ended_kept: int, turns: int) -> Sample:
    proc = psutil.Process()
    return Sample(
        t_s=round(_now() - started, 1),
        rss_mb=round(proc.memory_info().rss / 2**20, 1),
        fds=proc.num_fds(),
        threads=proc.num_threads(),
        tasks=len(asyncio.all_tasks()),
        sessions=sessions,
        ended_kept=ended_kept,
        turns=turns,
    )


def slope_per_min(samples: Sequence[Sample], field: str, since_s: float) -> float | None:
    """Least-squares slope of ``field`` per minute over the samples at or after ``since_s``."""
    points = [(s.t_s, float(getattr(s, field))) for s in samples if s.t_s >= since_s]
    if len(points) < 3:
        return None
    t, y = np.array(points).T
    return round(float(np.polyfit(t / 60.0, y, 1)[0]), 2) + 0.0  # (never -0.0)


def growth(before: Counter[str], after: Counter[str], top: int = 15) -> list[tuple[str, int]]:
    """The types whose live count grew most between two ``gc`` counts."""
    diff = Counter({k: after[k] - before.get(k, 0) for k in after})
    return [(k, n) for k, n in diff.most_common(top) if n > 0]


def object_counts() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__name__ for o in gc.get_objects())


def malloc_trim() -> bool:
    """Give glibc's free heap pages back to the system (False where there is no glibc)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def summarize_soak(samples: Sequence[Sample], turns: Sequence[dict[str, Any]]) -> dict[str, Any]:
    measured = [t for t in turns if not t.get("cut")]
    barge = [t["barge_in"]["latency_ms"] for t in measured if t.get("barge_in")]
    half = samples[-1].t_s / 2 if samples else 0.0
    second = [s for s in samples if s.t_s >= half]
    return {
        "turns": len(measured),
        "missed": sum(bool(t.get("missed")) for t in measured),
        "voice_to_voice_ms": describe(t.get("voice_to_voice_ms") for t in measured),
        "barge_in_ms": describe(barge),
        "rss_mb": {
            "first": samples[0].rss_mb if samples else None,
            "half": second[0].rss_mb if second else None,
            "last": samples[-1].rss_mb if samples else None,
            "peak": max((s.rss_mb for s in samples), default=None),
        },
        "slope_last_half_per_min": {
            f: slope_per_min(samples, f, half) for f in ("rss_mb", "fds", "threads", "tasks")
        },
        "range_last_half": {
            f: [min(getattr(s, f) for s in second), max(getattr(s, f) for s in second)]
            for f in ("fds", "threads", "tasks", "sessions")
        }
        if second
        else {},
    }


# ---------------------------------------------------------------- the plot (SVG, no matplotlib)

PANELS = (
    ("rss_mb", "RSS (MB)"),
    ("fds", "open fds"),
    ("threads", "threads"),
    ("tasks", "asyncio tasks"),
    ("sessions", "live sessions"),
)


def render_svg(samples: Sequence[Sample], title: str) -> str:
    """One small line chart per measure, over minutes, stacked."""
    width, height, pad, left = 640, 110, 24, 60
    parts = [f'<text x="{left}" y="16" font-size="13">{html.escape(title)}</text>']
    t_max = max((s.t_s for s in samples), default=1.0) or 1.0
    for row, (field, label) in enumerate(PANELS):
        top = 28 + row * (height + pad)
        values = [float(getattr(s, field)) for s in samples]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        lo, hi = (lo - 1, hi + 1) if hi == lo else (lo, hi)
        points = " ".join(
            f"{left + (s.t_s / t_max) * (width - left - 10):.1f},"
            f"{top + height - (v - lo) / (hi - lo) * height:.1f}"
            for s, v in zip(samples, values, strict=True)
        )
        parts += [
            f'<rect x="{left}" y="{top}" width="{width - left - 10}" height="{height}"'
            ' fill="none" stroke="#ccc"/>',
            f'<text x="4" y="{top + 12}" font-size="11">{label}</text>',
            f'<text x="4" y="{top + 26}" font-size="10">{hi:g}</text>',
            f'<text x="4" y="{top + height}" font-size="10">{lo:g}</text>',
            f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>',
        ]
    bottom = 28 + len(PANELS) * (height + pad)
    parts.append(f'<text x="{left}" y="{bottom}" font-size="11">0 … {t_max / 60:.1f} min</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{bottom + 8}"'
        f' font-family="sans-serif">{"".join(parts)}</svg>\n'
    )


# ---------------------------------------------------------------- the callers


async def one_turn(
    call: Call, turn: RenderedTurn, timing: Timing, deadline: float
) -> dict[str, Any]:
    driver = TurnDriver(call, timing, deadline)
    clock, start = TurnClock(_now()), len(call.events)
    cut = False
    try:
        await driver.run(turn, clock, start)
    except TimeUp:
        cut = True
    return turn_record(call, turn, clock, start, timing, cut=cut)


async def leave_mid_reply(
    call: Call, turn: RenderedTurn, timing: Timing, deadline: float, *, vanish: bool
) -> bool:
    """Ask, and hang up as soon as the reply is audible (``vanish``: without a close frame).
    Whether a reply was heard before leaving."""
    start = len(call.events)
    said = call.mic.say(turn.segments, turn.script.pauses_ms)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(said[-1].end), turn.speech_s + 30)
    if not said[-1].end.done():
        return False
    driver = TurnDriver(call, timing, deadline)
    with contextlib.suppress(TimeUp):
        reply = await driver.audible_reply(start, said[-1].end.result(), frozenset())
        if reply is not None:
            await asyncio.sleep(0.3)
            if vanish:
                call.vanish()
            return True
    return False


async def run_caller(
    number: int,
    url: str,
    scenarios: Sequence[RenderedScenario],
    timing: Timing,
    deadline: float,
    keep: Keep,
    hangups: list[dict[str, Any]],
) -> None:
    """Connect, run a scenario, leave mid-reply, reconnect with the next one, until ``deadline``."""
    await asyncio.sleep(number * timing.stagger_s)
    rounds = 0
    while _now() < deadline - 5.0:
        rendered = scenarios[(number + rounds) % len(scenarios)]
        rounds += 1
        context = {"caller": number + 1, "round": rounds, "scenario": rendered.scenario.name}
        vanish = rounds % 2 == 1
        try:
            async with open_call(REALTIME, url) as call:
                for turn in rendered.turns:
                    if _now() >= deadline:
                        return
                    keep({**context, **await one_turn(call, turn, timing, deadline)})
                    if call.closed is not None:
                        break
                if call.closed is None and _now() < deadline - 10.0:
                    heard = await leave_mid_reply(
                        call, rendered.turns[0], timing, deadline, vanish=vanish
                    )
                    hangups.append({**context, "vanished": vanish, "reply_heard": heard})
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            keep({**context, **failed_record(rendered.turns[0], f"{type(exc).__name__}: {exc}")})
            await asyncio.sleep(1.0)


# ---------------------------------------------------------------- the run


@dataclass(slots=True)
class SoakOptions:
    minutes: float = 10.0
    callers: int = 3
    sample_s: float = 10.0
    tracemalloc: bool = False
    settings: dict[str, str] | None = None
    out: Path | None = None


async def soak(opts: SoakOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    from voice.config import load
    from voice.engines import close_engines, load_engines, warm_up
    from voice.server import VoiceServer

    with tempfile.TemporaryDirectory(prefix="voice-soak-") as data:
        overrides = {"server.port": "0", "server.data_dir": data, **(opts.settings or {})}
        config = load(overrides=overrides)
        say("loading and warming up the models ...")
        loaded = load_engines(config)
        warm_up(loaded.engines, config.pipeline.instructions)  # as the server does
        server = VoiceServer(config, loaded.engines)
        port = await server.start("127.0.0.1", 0)
        try:
            return await _drive(server, f"ws://127.0.0.1:{port}/v1/realtime", opts, say)
        finally:
            await server.stop()
            close_engines(loaded.engines)


async def _drive(
    server: Any, url: str, opts: SoakOptions, say: Callable[[str], None]
) -> dict[str, Any]:
    scenarios = [Renderer(REALTIME_RATE).render(s) for s in DEFAULT_SCENARIOS]
    timing = Timing()
    turns: list[dict[str, Any]] = []
    hangups: list[dict[str, Any]] = []
    samples: list[Sample] = []
    started = _now()
    duration = opts.minutes * 60.0
    deadline = started + duration

    def keep(rec: dict[str, Any]) -> None:
        rec["t_s"] = round(_now() - started, 1)
        turns.append(rec)
        v2v = rec.get("voice_to_voice_ms")
        what = "cut" if rec.get("cut") else "MISSED" if rec.get("missed") else f"v2v {v2v:.0f} ms"
        say(f"[{rec['t_s']:6.1f} s caller {rec['caller']}] {rec['turn']} ({rec['kind']}): {what}")

    def sample() -> Sample:
        s = take_sample(started, len(server.sessions), len(server.ended), len(turns))
        samples.append(s)
        return s

    if opts.tracemalloc:
        tracemalloc.start(10)
    counts: dict[str, Counter[str]] = {"start": object_counts()}
    snapshots: list[tracemalloc.Snapshot] = []

    async def sampler() -> None:
        half_done = False
        while True:
            s = sample()
            say(
                f"[{s.t_s:6.1f} s] RSS {s.rss_mb:.0f} MB, fds {s.fds}, threads {s.threads},"
                f" tasks {s.tasks}, sessions {s.sessions}, turns {s.turns}"
            )
            if not half_done and s.t_s >= duration / 2:
                half_done = True
                counts["half"] = object_counts()
                if opts.tracemalloc:
                    snapshots.append(tracemalloc.take_snapshot())
            await asyncio.sleep(opts.sample_s)

    sampling = asyncio.create_task(sampler())
    try:
        async with asyncio.TaskGroup() as tg:
            for n in range(opts.callers):
                tg.create_task(run_caller(n, url, scenarios, timing, deadline, keep, hangups))
        await asyncio.sleep(3.0)  # the sessions' teardown
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    after = sample()
    counts["end"] = object_counts()
    if opts.tracemalloc:
        snapshots.append(tracemalloc.take_snapshot())
        tracemalloc.stop()
    trimmed = malloc_trim()
    rss_trimmed = round(psutil.Process().memory_info().rss / 2**20, 1)
    summary = summarize_soak(samples, turns)
    summary["hangups"] = {
        "total": len(hangups),
        "vanished": sum(h["vanished"] for h in hangups),
        "reply_heard": sum(h["reply_heard"] for h in hangups),
    }
    summary["after"] = asdict(after)
    summary["rss_after_malloc_trim_mb"] = rss_trimmed if trimmed else None
    return {
        "benchmark": NAME,
        "machine": machine_info(),
        "options": {
            "minutes": opts.minutes,
            "callers": opts.callers,
            "sample_s": opts.sample_s,
            "tracemalloc": opts.tracemalloc,
            "settings": opts.settings or {},
            "transcripts_kept": server.config.server.transcripts_kept,
        },
        "summary": summary,
        "live_objects": {
            point: {t: c.get(t, 0) for t in WATCHED_TYPES} for point, c in counts.items()
        },
        "object_growth_half_to_end": growth(counts.get("half", counts["start"]), counts["end"]),
        "tracemalloc_half_to_end": _allocation_growth(snapshots),
        "samples": [asdict(s) for s in samples],
        "hangups": hangups,
        "turns": turns,
    }


def _allocation_growth(snapshots: list[tracemalloc.Snapshot], top: int = 15) -> list[str]:
    if len(snapshots) < 2:
        return []
    stats = snapshots[1].compare_to(snapshots[0], "lineno")
    return [str(s) for s in stats[:top]]


def summary_lines(report: dict[str, Any]) -> list[str]:
    s = report["summary"]
    v2v, barge, rss = s["voice_to_voice_ms"], s["barge_in_ms"], s["rss_mb"]
    slopes, ranges = s["slope_last_half_per_min"], s.get("range_last_half", {})
    lines = [
        "",
        f"== soak: {report['options']['callers']} callers, {report['options']['minutes']} min ==",
        f"turns {s['turns']}, missed {s['missed']}; hang-ups mid-reply {s['hangups']['total']}"
        f" ({s['hangups']['vanished']} without a close frame)",
        f"voice-to-voice p50 {v2v['p50']} ms, p95 {v2v['p95']} ms;"
        f" barge-in p50 {barge['p50']} ms, p95 {barge['p95']} ms",
        f"RSS first {rss['first']} MB, at half {rss['half']}, last {rss['last']}, peak"
        f" {rss['peak']}; after malloc_trim {s['rss_after_malloc_trim_mb']} MB",
        f"slope over the last half: RSS {slopes['rss_mb']} MB/min, fds {slopes['fds']}/min,"
        f" threads {slopes['threads']}/min, tasks {slopes['tasks']}/min",
    ]
    for field, (lo, hi) in ranges.items():
        lines.append(f"  last half {field}: {lo} … {hi}")
    after = s["after"]
    lines.append(
        f"after the callers left: sessions {after['sessions']}, tasks {after['tasks']},"
        f" fds {after['fds']}, threads {after['threads']}"
    )
    lines.append(f"live per-session objects: {report['live_objects']}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--callers", type=int, default=3, help="callers at once (default 3)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="sampling period (10 s)")
    parser.add_argument("--tracemalloc", action="store_true", help="trace Python allocations")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="a setting"
    )
    parser.add_argument("--out", type=Path, help="results folder (benchmarks/results)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.callers < 1 or args.sample_s <= 0:
        parser.error("--minutes and --sample-s must be > 0, --callers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = dict(item.split("=", 1) for item in args.set)
    opts = SoakOptions(
        args.minutes, args.callers, args.sample_s, args.tracemalloc, settings, args.out
    )
    report = asyncio.run(soak(opts))
    path = write_json(report, NAME, opts.out)
    svg = path.with_suffix(".svg")
    title = f"soak: {opts.callers} callers, {opts.minutes:g} min ({path.stem})"
    svg.write_text(render_svg([Sample(**s) for s in report["samples"]], title))
    print("\n".join(summary_lines(report)))
    print(f"\n{path}\n{svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
