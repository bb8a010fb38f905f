"""The ``voice bench`` command (also ``python -m benchmarks.harness``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import netns, softphone, wiretap
from .audio import espeak_available
from .bench import BenchOptions, benchmark
from .clients import with_echo
from .echo import parse_echo
from .overlaps import OVERLAP_SCENARIOS
from .protocols import merge_reports, parse_protocols
from .report import RESULTS, compare_text, summary_text, write_outputs
from .runner import Timing
from .scenarios import DEFAULT_SCENARIOS, Scenario, load_scenario_file
from .server import LOOPBACK, NamedConfig, default_configs, parse_config, server_keys, unknown_keys
from .timeline import BARESIP, REALTIME, SIP, TWILIO, WEBRTC
from .webrtc_client import open_any_call

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
        "--url",
        help="a running server (ws://HOST:PORT/v1/realtime, .../v1/twilio/media-stream,"
        " http://HOST:PORT/v1/realtime/calls for webrtc, or sip:agent@HOST:PORT for sip)",
    )
    p.add_argument(
        "--protocol",
        type=parse_protocols,
        default=[REALTIME],
        metavar="realtime,webrtc,twilio,sip,baresip",
        help="one or more, compared in one run (default realtime); webrtc without --url runs"
        " the benchmark inside a network namespace of its own; baresip calls the SIP agent with"
        " the baresip softphone and times it on the loopback wire (root)",
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
        "--name",
        metavar="NAME",
        help="output files NAME-<UTC>.json/.html and NAME-latest.json (default bench;"
        " overlaps with --overlaps)",
    )
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
        action="append",
        metavar="FILE",
        help="a JSON scenario file (WAVs, pauses, barge-ins); repeat to run several in turn,"
        " 'default' for the built-in set",
    )
    p.add_argument(
        "--overlaps",
        action="store_true",
        help="run the backchannel/interruption set (speech over the agent, several voices)"
        " instead of the default scenarios",
    )
    p.add_argument(
        "--echo",
        type=parse_echo,
        metavar="DELAY_MS:GAIN_DB",
        help="twilio, sip: the callers are on a speakerphone whose microphone hears the agent again"
        " DELAY_MS later and GAIN_DB quieter (e.g. 200:-12)",
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


def scenario_files(paths: list[Path]) -> list[Scenario]:
    """``--scenario`` files in order (``default``: the built-in set); a scenario that comes
    again is named ``NAME#2``, ``NAME#3`` …"""
    out: list[Scenario] = []
    seen: dict[str, int] = {}
    for path in paths:
        found = DEFAULT_SCENARIOS if str(path) == "default" else load_scenario_file(path)
        for scenario in found:
            seen[scenario.name] = seen.get(scenario.name, 0) + 1
            n = seen[scenario.name]
            out.append(scenario if n == 1 else replace(scenario, name=f"{scenario.name}#{n}"))
    return out


def baresip_unavailable() -> str | None:
    """None when the baresip caller can run here, else why not."""
    if not softphone.installed():
        return "the softphone is not installed (apt-get install baresip)"
    return wiretap.available()


def _echo(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    if args.url and args.config:
        p.error("--config needs the harness to start the server: leave out --url")
    if args.url and len(args.protocol) > 1:
        p.error("--url is one server endpoint: give one --protocol with it")
    if args.echo and not set(args.protocol) <= {TWILIO, SIP}:
        p.error("--echo is a phone's: use it with --protocol twilio and/or sip")
    if WEBRTC in args.protocol and not args.url and not netns.inside():
        reason = netns.available()
        if reason is not None:
            print(f"voice bench: webrtc needs a network namespace: {reason}")
            return 2
        return netns.run_inside(argv)
    if BARESIP in args.protocol and (reason := baresip_unavailable()) is not None:
        print(f"voice bench: baresip: {reason}")
        return 2
    try:
        scenarios = scenario_files(args.scenario) if args.scenario else None
        if args.overlaps:
            if scenarios is not None:
                raise ValueError("--overlaps is a scenario set: leave out --scenario")
            scenarios = list(OVERLAP_SCENARIOS)
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
    reports = []
    for protocol in args.protocol:
        with tempfile.TemporaryDirectory(prefix="voice-bench-") as tmp:
            opts = BenchOptions(
                protocol=protocol,
                url=args.url,
                levels=args.concurrency or [args.sessions],
                turns=args.turns,
                time_limit_s=args.time_limit / len(args.protocol),
                timing=Timing(turn_timeout_s=args.turn_timeout),
                configs=configs,
                workdir=Path(tmp),
                host=netns.SERVER_IP if netns.inside() else LOOPBACK,
                echo=args.echo,
                opener=with_echo(open_any_call, args.echo) if args.echo else open_any_call,
            )
            report = asyncio.run(benchmark(opts, scenarios, echo=_echo))
        reports.append(report)
    report = merge_reports(reports)
    print(summary_text(report))
    name = args.name or ("overlaps" if args.overlaps else "bench")  # (not bench-latest.json)
    json_path, html_path = write_outputs(report, args.out, name)
    print(f"\nresults: {json_path}\nreport:  {html_path}")
    failed = all(c.get("error") for c in report["configs"])
    return 1 if failed else 0
