"""The ``voice bench`` command (also ``python -m benchmarks.harness``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .audio import espeak_available
from .bench import BenchOptions, benchmark
from .report import RESULTS, compare_text, summary_text, write_outputs
from .runner import Timing
from .scenarios import load_scenario_file
from .server import NamedConfig, default_configs, parse_config, server_keys, unknown_keys
from .timeline import REALTIME, TWILIO

DESCRIPTION = """\
Benchmark a voice agent from the caller's side: synthetic callers speak scripted turns (with
mid-sentence pauses and barge-ins) in real time and measure voice-to-voice latency, barge-in
latency, false interruptions, missed turns, WER and the server's stage timings.

Without --url it starts `python -m voice serve` itself, once per configuration (default:
`optimized` = the server's defaults and `reference` = its latency optimizations off), so both
are compared in one run. `voice bench compare A.json B.json` prints B/A for every summary metric.
"""


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected levels like 1,4, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return sorted(set(levels))


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voice bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="voice bench compare A.json B.json: the ratio B/A of every summary metric",
    )
    p.add_argument(
        "--url", help="a running server (ws://HOST:PORT/v1/realtime or .../v1/twilio/media-stream)"
    )
    p.add_argument(
        "--protocol", choices=(REALTIME, TWILIO), default=REALTIME, help="default realtime"
    )
    p.add_argument(
        "--sessions",
        type=_positive(int),
        default=1,
        metavar="N",
        help="concurrent sessions when --concurrency is not given (default 1)",
    )
    p.add_argument(
        "--concurrency",
        type=_levels,
        metavar="1,4",
        help="concurrency levels to sweep; the scenario set runs at each",
    )
    p.add_argument(
        "--turns", type=_positive(int), metavar="K", help="turns per session (default: all, 11)"
    )
    p.add_argument(
        "--time-limit",
        type=_positive(float),
        default=600.0,
        metavar="S",
        help="bound on the whole run, shared by the configurations (default 600 s)",
    )
    p.add_argument(
        "--turn-timeout",
        type=_positive(float),
        default=45.0,
        metavar="S",
        help="no reply this long after the caller's speech: a missed turn (default 45 s)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (default {RESULTS})")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=SECTION.KEY=VALUE,...",
        help="a named server configuration (repeat to A/B; replaces the default pair)",
    )
    p.add_argument(
        "--scenario",
        type=Path,
        metavar="FILE",
        help="a JSON scenario file (WAVs, pauses, barge-ins)",
    )
    return p


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="voice bench compare", description="B/A for every summary metric of two reports"
    )
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    try:
        a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    except (OSError, ValueError) as exc:
        print(f"voice bench compare: {exc}", file=sys.stderr)
        return 2
    print(f"A = {args.a}\nB = {args.b}")
    print(compare_text(a, b, ("A", "B")))
    return 0


def configurations(args: argparse.Namespace) -> list[NamedConfig]:
    """The named configurations to run, checked against what this server knows."""
    known = server_keys()
    configs = [parse_config(text) for text in args.config] or default_configs(known)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"configuration names must differ: {names}")
    unknown = unknown_keys(configs, known)
    if unknown:
        raise ValueError(f"unknown config key(s) for this server: {', '.join(unknown)}")
    return configs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if args.url and args.config:
        p.error("--config needs the harness to start the server: leave out --url")
    try:
        scenarios = load_scenario_file(args.scenario) if args.scenario else None
        configs = [] if args.url else configurations(args)
    except ValueError as exc:
        p.error(str(exc))
    if not espeak_available():
        needs_espeak = scenarios is None or any(
            not seg.wav for s in scenarios for t in s.turns for seg in t.segments
        )
        if needs_espeak:
            print("voice bench: the scenarios need espeak-ng (apt-get install espeak-ng)")
            return 2
    with tempfile.TemporaryDirectory(prefix="voice-bench-") as tmp:
        opts = BenchOptions(
            protocol=args.protocol,
            url=args.url,
            levels=args.concurrency or [args.sessions],
            turns=args.turns,
            time_limit_s=args.time_limit,
            timing=Timing(turn_timeout_s=args.turn_timeout),
            configs=configs,
            workdir=Path(tmp),
        )
        report = asyncio.run(benchmark(opts, scenarios, echo=lambda line: print(line, flush=True)))
    print(summary_text(report))
    json_path, html_path = write_outputs(report, args.out)
    print(f"\nresults: {json_path}\nreport:  {html_path}")
    failed = all(c.get("error") for c in report["configs"])
    return 1 if failed else 0
