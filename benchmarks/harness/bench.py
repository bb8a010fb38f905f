"""One benchmark run: for each named configuration (its own server, unless ``--url``), each
concurrency level, N callers running the scenario set at once; everything bounded by the time
limit, shared fairly between the configurations and, within one, between its levels."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .audio import CHUNK_MS, LOUD
from .clients import REALTIME_RATE, TWILIO_RATE, WEBRTC_RATE, CallOpener
from .cpu import level_cpu, sample
from .echo import EchoPath
from .machine import host_probe_ms, machine_info, usable_cores
from .report import format_turn
from .runner import Timing, run_conversation
from .scenarios import DEFAULT_SCENARIOS, RenderedScenario, Renderer, Scenario, select_turns
from .server import READY_TIMEOUT_S, LocalServer, NamedConfig
from .stats import capacity_at_p95, ratios, sessions_per_core, summarize
from .timeline import BARESIP, REALTIME, SIP, TWILIO, WEBRTC
from .webrtc_client import open_any_call

FORMAT = 1
Print = Callable[[str], None]


@dataclass(slots=True)
class BenchOptions:
    protocol: str = REALTIME
    url: str | None = None
    levels: list[int] = field(default_factory=lambda: [1])
    turns: int | None = None
    time_limit_s: float = 600.0
    timing: Timing = field(default_factory=Timing)
    configs: list[NamedConfig] = field(default_factory=list)
    """Ignored with ``url`` (the server is what it is)."""
    workdir: Path = Path(".")
    """Server logs go here."""
    host: str = "127.0.0.1"
    """Where the server the harness starts listens (WebRTC: an address of its own namespace)."""
    opener: CallOpener = open_any_call
    """Makes each caller (``open_sdk_call``: Realtime through the ``openai`` SDK)."""
    echo: EchoPath | None = None
    """The callers' speakerphone echo (``opener`` adds it: :func:`~.clients.with_echo`)."""

    @property
    def rate(self) -> int:
        rates = {TWILIO: TWILIO_RATE, SIP: TWILIO_RATE, BARESIP: TWILIO_RATE, WEBRTC: WEBRTC_RATE}
        return rates.get(self.protocol, REALTIME_RATE)


def _now() -> float:
    return time.perf_counter()


async def run_level(
    opts: BenchOptions,
    url: str,
    rendered: list[RenderedScenario],
    level: int,
    deadline: float,
    config: str,
    echo: Print,
) -> tuple[list[dict[str, Any]], bool]:
    """``level`` callers at once, each running every scenario in turn (staggered starts)."""

    async def caller(index: int) -> tuple[list[dict[str, Any]], bool]:
        await asyncio.sleep(min(index * opts.timing.stagger_s, max(0.0, deadline - _now())))
        records: list[dict[str, Any]] = []
        for scenario in rendered:
            if _now() >= deadline:
                return records, True
            context = {"config": config, "concurrency": level, "caller": index + 1}
            done, time_up = await run_conversation(
                opts.protocol,
                url,
                scenario,
                opts.timing,
                deadline,
                lambda rec: echo(format_turn(rec)),
                context,
                opener=opts.opener,
            )
            records += done
            if time_up:
                return records, True
        return records, False

    # a backstop in case some wait forgot the deadline: never run far past it
    hard = max(1.0, deadline - _now() + opts.timing.turn_timeout_s + 30.0)
    async with asyncio.timeout(hard):
        results = await asyncio.gather(*(caller(i) for i in range(level)))
    records = [r for rs, _ in results for r in rs]  # by caller, each in the order it ran
    return records, any(up for _, up in results)


async def _sample_rss(server: LocalServer, peak: list[float]) -> None:
    while True:
        rss = await asyncio.to_thread(server.rss_mb)
        if rss is not None:
            peak[0] = max(peak[0], rss)
        await asyncio.sleep(1.0)


async def run_config(
    opts: BenchOptions,
    config: NamedConfig,
    rendered: list[RenderedScenario],
    deadline: float,
    echo: Print,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": config.name,
        "settings": dict(config.settings),
        "skipped_reference_keys": list(config.skipped),
        "url": opts.url,
        "error": None,
        "server": None,
        "levels": [],
        "turns": [],
    }
    server: LocalServer | None = None
    sampler: asyncio.Task[None] | None = None
    peak = [0.0]
    rss: dict[str, float | None] = {"after_warm_up": None, "peak": None, "after_run": None}
    try:
        if opts.url:
            url = opts.url
        else:
            settings = dict(config.settings)
            top = max(opts.levels)
            if top > 8 and "server.max_sessions" not in settings:
                settings["server.max_sessions"] = str(top)
            log = opts.workdir / f"server-{config.name}.log"
            server = LocalServer(settings, log, host=opts.host)
            url = server.url(opts.protocol)
            result["url"] = url
            echo(f"[{config.name}] starting the server on port {server.port} ...")
            ready_in = max(1.0, min(READY_TIMEOUT_S, deadline - _now()))
            await asyncio.to_thread(server.wait_ready, ready_in)
            rss["after_warm_up"] = server.rss_mb()
            peak[0] = rss["after_warm_up"] or 0.0
            sampler = asyncio.create_task(_sample_rss(server, peak))
            result["server"] = {"command": server.command[1:], "ready_s": server.ready_s}
            echo(f"[{config.name}] ready in {server.ready_s} s: {url}")
        await _run_levels(opts, url, rendered, deadline, config.name, echo, result, server)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        echo(f"[{config.name}] FAILED: {result['error']}")
        if server is not None:
            result["server_log_tail"] = server.tail()
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        if server is not None:
            rss["after_run"] = server.rss_mb()
            if rss["after_run"] is not None:
                peak[0] = max(peak[0], rss["after_run"])
            rss["peak"] = peak[0] or None
            await asyncio.to_thread(server.stop)
            result["server"] = {**(result["server"] or {}), "rss_mb": rss}
    finish_config(result, cores=usable_cores())
    return result


async def _run_levels(
    opts: BenchOptions,
    url: str,
    rendered: list[RenderedScenario],
    deadline: float,
    name: str,
    echo: Print,
    result: dict[str, Any],
    server: LocalServer | None = None,
) -> None:
    """Each concurrency level in turn, sharing what time is left equally; with a server of the
    harness's own, its resident memory at rest before each level and at its peak during it."""
    for i, level in enumerate(opts.levels):
        now = _now()
        if now >= deadline:
            echo(f"[{name}] time limit: concurrency {level} not run")
            break
        level_deadline = now + (deadline - now) / (len(opts.levels) - i)
        echo(f"[{name}] {level} concurrent session(s)")
        rest = await asyncio.to_thread(server.rss_mb) if server is not None else None
        peak = [rest or 0.0]
        sampler = asyncio.create_task(_sample_rss(server, peak)) if server is not None else None
        pid = server.proc.pid if server is not None else None
        cpu_start, started = await asyncio.to_thread(sample, pid), _now()
        try:
            records, time_up = await run_level(
                opts, url, rendered, level, level_deadline, name, echo
            )
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        cpu_end, wall = await asyncio.to_thread(sample, pid), _now() - started
        answered = sum(1 for r in records if not r.get("cut") and not r.get("missed"))
        result["levels"].append(
            {
                "concurrency": level,
                "wall_s": round(_now() - now, 1),
                "time_up": time_up,
                "summary": summarize(records, opts.protocol),
                "rss_mb": _level_memory(rest, peak[0] or None, level),
                "cpu": level_cpu(cpu_start, cpu_end, wall, answered, usable_cores()),
            }
        )
        result["turns"] += records


def _level_memory(rest: float | None, peak: float | None, level: int) -> dict[str, float | None]:
    """The server's resident memory before a level (at rest) and at its peak, and what each of
    the level's sessions added (peak - rest, shared out)."""
    added = None if rest is None or peak is None else round(max(0.0, peak - rest) / level, 1)
    return {"at_rest": rest, "peak": peak, "per_session": added}


def finish_config(result: dict[str, Any], cores: int) -> None:
    """The configuration's sweep and headline summary (its lowest concurrency level)."""
    levels = result["levels"]
    p50 = {lv["concurrency"]: lv["summary"]["voice_to_voice_ms"]["p50"] for lv in levels}
    sweep = sessions_per_core(p50, cores)
    sweep["p50_ms"] = {str(k): v for k, v in p50.items()}
    sweep["p95_ms"] = {
        str(lv["concurrency"]): lv["summary"]["voice_to_voice_ms"]["p95"] for lv in levels
    }
    sweep["missed"] = {str(lv["concurrency"]): lv["summary"]["missed"] for lv in levels}
    sweep["at_p95_target"] = capacity_at_p95(
        {lv["concurrency"]: lv["summary"]["voice_to_voice_ms"]["p95"] for lv in levels},
        {lv["concurrency"]: lv["summary"]["missed"] for lv in levels},
        cores,
    )
    sweep["rss_mb_per_session"] = {
        str(lv["concurrency"]): (lv.get("rss_mb") or {}).get("per_session") for lv in levels
    }
    sweep["server_cores"] = {
        str(lv["concurrency"]): (lv.get("cpu") or {}).get("server_cores") for lv in levels
    }
    sweep["server_ms_per_turn"] = {
        str(lv["concurrency"]): (lv.get("cpu") or {}).get("server_ms_per_turn") for lv in levels
    }
    result["sweep"] = sweep
    summary: dict[str, Any] = dict(levels[0]["summary"]) if levels else {}
    if levels:
        summary["concurrency"] = levels[0]["concurrency"]
    server = result.get("server") or {}
    if server.get("rss_mb"):
        summary["server_rss_mb"] = dict(server["rss_mb"])
    if levels and levels[0].get("cpu"):
        summary["server_cpu"] = dict(levels[0]["cpu"])
    summary["sessions_per_core"] = sweep["sessions_per_core"]
    result["summary"] = summary


def comparisons(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every other configuration against the first: other / baseline for each summary metric."""
    if len(configs) < 2:
        return []
    base = configs[0]
    return [
        {
            "baseline": base["name"],
            "other": other["name"],
            "ratios": ratios(base.get("summary") or {}, other.get("summary") or {}),
        }
        for other in configs[1:]
    ]


async def benchmark(
    opts: BenchOptions, scenarios: list[Scenario] | None = None, echo: Print = print
) -> dict[str, Any]:
    """Run everything; returns the full report (not yet written anywhere)."""
    started = datetime.now(UTC)
    probe_start = await asyncio.to_thread(host_probe_ms)
    t0 = _now()
    deadline = t0 + opts.time_limit_s
    chosen = select_turns(list(scenarios or DEFAULT_SCENARIOS), opts.turns)
    renderer = Renderer(opts.rate)
    rendered = await asyncio.to_thread(lambda: [renderer.render(s) for s in chosen])
    configs = opts.configs if not opts.url else [NamedConfig("server")]
    if not configs:
        configs = [NamedConfig("default")]
    results = []
    for i, config in enumerate(configs):
        now = _now()
        share = now + max(0.0, deadline - now) / (len(configs) - i)
        results.append(await run_config(opts, config, rendered, share, echo))
    return {
        "tool": "voice bench",
        "format": FORMAT,
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(_now() - t0, 1),
        "protocol": opts.protocol,
        "url": opts.url,
        "machine": machine_info(),
        "host_probe_ms": {"start": probe_start, "end": await asyncio.to_thread(host_probe_ms)},
        "options": {
            "levels": opts.levels,
            "turns": sum(len(s.turns) for s in chosen),
            "time_limit_s": opts.time_limit_s,
            "turn_timeout_s": opts.timing.turn_timeout_s,
            "settle_s": opts.timing.settle_s,
            "twilio_gap_s": opts.timing.gap_s,
            "twilio_quiet_s": opts.timing.quiet_s,
            "rate": opts.rate,
            "chunk_ms": CHUNK_MS,
            "loud_threshold": LOUD,
            "echo": opts.echo.describe() if opts.echo else None,
        },
        "scenarios": [s.describe() for s in chosen],
        "configs": results,
        "comparisons": comparisons(results),
    }
