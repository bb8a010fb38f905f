"""What an idle call costs in CPU, per transport: the server's share of a core and the caller's
while a caller is connected and silent (the harness's microphone sending silence in real time,
as a quiet caller's does), sampled once a second; with ``--calls N``, N such calls at once (what
N lines kept open take from a box's turns).

    python -m benchmarks.call_cpu [--protocol realtime,webrtc,twilio] [--seconds S] [--calls N]
        [--config NAME=SECTION.KEY=VALUE,...] [--out DIR]

Each configuration gets its own server (``python -m voice serve``, the embedded models), its
idle CPU measured first with no call, then one call of each protocol in turn; by default the
server's defaults against ``continuous`` (``webrtc.dtx=false``: the WebRTC track sends a packet
every frame, silence included), so the two are compared in one run. The callers are the
harness's (``benchmarks/harness``: the WebSocket Realtime caller, the Twilio Media Streams
caller, the aiortc WebRTC caller); everything runs inside a private network namespace with a
veth pair (``tests/netns.py``; ICE needs an address other than loopback), in one process besides
the server, so the caller's figure is this process's CPU. On two cores an idle call's CPU is
taken from every other caller's turns: it is the cost of a line kept open.

JSON: ``benchmarks/results/call_cpu-<UTC>.json`` and ``call_cpu-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks.harness.cpu import process_seconds
from benchmarks.harness.machine import machine_info
from benchmarks.harness.protocols import parse_protocols
from benchmarks.harness.report import RESULTS, write_json
from benchmarks.harness.server import LocalServer, NamedConfig, parse_config
from benchmarks.harness.stats import describe

NAME = "call_cpu"
PROTOCOLS = ["realtime", "webrtc", "twilio"]
DEFAULT_CONFIGS = ["default=", "continuous=webrtc.dtx=false"]
SETTLE_S = 3.0
"""After the server is ready, and after a call connects, before sampling (start-up work ends)."""
READY_TIMEOUT_S = 300.0
MAX_CALLS = 32
"""A bound on ``--calls`` (every load run is bounded)."""


def _server_cpu(proc: psutil.Process) -> float:
    return process_seconds(proc.pid) or 0.0


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sample(server: psutil.Process, seconds: int) -> dict[str, list[float]]:
    """Per second: % of a core of the server (and its children) and of this process."""
    out: dict[str, list[float]] = {"server": [], "caller": []}
    s0, c0, t0 = _server_cpu(server), _own_cpu(), time.perf_counter()
    for _ in range(seconds):
        await asyncio.sleep(1.0)
        s1, c1, t1 = _server_cpu(server), _own_cpu(), time.perf_counter()
        out["server"].append(100 * (s1 - s0) / (t1 - t0))
        out["caller"].append(100 * (c1 - c0) / (t1 - t0))
        s0, c0, t0 = s1, c1, t1
    return out


async def measure(
    config: NamedConfig, protocols: list[str], seconds: int, calls: int = 1
) -> dict[str, Any]:
    from benchmarks.harness.webrtc_client import open_any_call
    from tests.netns import SERVER_IP

    settings = dict(config.settings)
    if calls > 1:  # (not refused by the default capacity)
        settings.setdefault("server.max_sessions", str(max(calls, 4)))
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        server = LocalServer(settings, Path(tmp) / "server.log", host=SERVER_IP)
        try:
            await asyncio.to_thread(server.wait_ready, READY_TIMEOUT_S)
            proc = psutil.Process(server.proc.pid)
            await asyncio.sleep(SETTLE_S)
            idle = await _sample(proc, seconds)
            result: dict[str, Any] = {
                "settings": config.settings,
                "no_call": {"server_pct": describe(idle["server"])},
            }
            for protocol in protocols:
                print(
                    f"[{config.name}] {calls} idle {protocol} call(s), {seconds} s ...", flush=True
                )
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(calls):
                        await stack.enter_async_context(
                            open_any_call(protocol, server.url(protocol))
                        )
                    await asyncio.sleep(SETTLE_S)
                    got = await _sample(proc, seconds)
                result[protocol] = {
                    "calls": calls,
                    "server_pct": describe(got["server"]),
                    "caller_pct": describe(got["caller"]),
                }
            return result
        finally:
            server.stop()


async def inside(args: argparse.Namespace) -> dict[str, Any]:
    configs = [parse_config(text) for text in args.config or DEFAULT_CONFIGS]
    return {c.name: await measure(c, args.protocol, args.seconds, args.calls) for c in configs}


def print_summary(report: dict[str, Any]) -> None:
    m = report["machine"]
    calls = report["settings"].get("calls", 1)
    what = "one idle call" if calls == 1 else f"{calls} idle calls at once"
    print(f"\n== CPU of {what} (% of a core, p50 / p95 of 1 s samples) ==")
    print(f"machine: {m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, {m['platform']}")
    for name, result in report["configs"].items():
        settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items()) or "the defaults"
        idle = result["no_call"]["server_pct"]
        print(f"[{name}] ({settings}); server with no call: {idle['p50']} / {idle['p95']}")
        for protocol in report["settings"]["protocols"]:
            s, c = result[protocol]["server_pct"], result[protocol]["caller_pct"]
            server, caller = f"{s['p50']:>5} / {s['p95']:<5}", f"{c['p50']:>5} / {c['p95']}"
            each = f" ({s['p50'] / calls:.1f} a call)" if calls > 1 else ""
            print(f"  {protocol:<9} server {server}{each}  caller {caller}")


def host(args: argparse.Namespace) -> int:
    from tests import netns

    reason = netns.available()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 2
    started = datetime.now(UTC).isoformat(timespec="seconds")
    configs = args.config or DEFAULT_CONFIGS
    forwarded = ["--protocol", ",".join(args.protocol), "--seconds", str(args.seconds)]
    forwarded += ["--calls", str(args.calls)]
    for text in configs:
        forwarded += ["--config", text]
    each = args.seconds + 30 + 5 * args.calls  # (a call connects in well under 5 s)
    budget = len(configs) * (READY_TIMEOUT_S + (len(args.protocol) + 1) * each)
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        out = Path(tmp) / "inside.json"
        try:
            measured = netns.run_scenarios(
                f"benchmarks.{NAME}", out, "--inside", *forwarded, timeout=budget
            )
        except AssertionError as exc:
            print(exc, file=sys.stderr)
            return 1
    report = {
        "started_utc": started,
        "machine": machine_info(),
        "settings": {
            "protocols": args.protocol,
            "seconds": args.seconds,
            "calls": args.calls,
            "callers": "benchmarks/harness (realtime, twilio: websockets; webrtc: aiortc),"
            " microphone sending silence in real time",
            "network": "veth pair in a private network namespace (tests/netns.py)",
        },
        "configs": measured,
    }
    print_summary(report)
    print(f"results: {write_json(report, NAME, args.out)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("inside_out", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--protocol",
        type=parse_protocols,
        default=PROTOCOLS,
        metavar="realtime,webrtc,twilio",
        help="the callers, one idle call each (default all three)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="1 s samples per call (default 10)")
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME=SECTION.KEY=VALUE,...",
        help="a named server configuration (repeat to compare; default: the defaults and"
        " continuous=webrtc.dtx=false)",
    )
    parser.add_argument("--calls", type=int, default=1, help="idle calls at once (default 1)")
    parser.add_argument("--out", type=Path, help=f"the output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.seconds < 1:
        parser.error("--seconds must be at least 1")
    if not 1 <= args.calls <= MAX_CALLS:
        parser.error(f"--calls must be 1 to {MAX_CALLS}")
    unknown = [p for p in args.protocol if p not in PROTOCOLS]
    if unknown:
        parser.error(f"--protocol: {', '.join(unknown)} (use {', '.join(PROTOCOLS)})")
    for text in args.config or []:
        try:
            parse_config(text)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inside:
        report = asyncio.run(inside(args))
        args.inside_out.write_text(json.dumps(report, indent=1))
        return 0
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
