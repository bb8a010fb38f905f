"""Voice-to-voice latency of the realtime server through the official ``openai`` SDK (``make
bench``): a preset of the harness (``voice bench``, ``benchmarks/harness``).

One synthetic caller asks K short questions (``scenarios.QUESTIONS``, spoken by espeak-ng in
``en-us+m3``, a voice other than the agent's) on one Realtime session opened with
``client.realtime.connect`` (asking for the ``x.voice.*`` events), streamed in real time in 20 ms
chunks like a microphone, with silence in between. Per turn the harness measures voice-to-voice
(the last chunk with audible speech sent → the first audible reply audio received), the server's
stage breakdown (``x.voice.turn.metrics``), the user transcript and its WER, and the reply.

    python -m benchmarks.realtime_latency [--turns K] [--url ws://HOST:PORT/v1/realtime] [--out DIR]

Without ``--url`` it starts ``python -m voice serve`` on a free port, waits for ``READY`` and
also reports the server's resident memory (RSS, with child processes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.audio import espeak_available
from benchmarks.harness.bench import BenchOptions, benchmark
from benchmarks.harness.clients import open_sdk_call
from benchmarks.harness.report import RESULTS, summary_text, write_outputs
from benchmarks.harness.runner import Timing
from benchmarks.harness.scenarios import questions
from benchmarks.harness.server import READY_TIMEOUT_S

NAME = "realtime_latency"
TURN_TIMEOUT_S = 60.0
"""No finished reply this long after the question: a missed turn."""
METRICS_GRACE_S = 5.0
TURN_BUDGET_S = TURN_TIMEOUT_S + 15.0
"""What one turn may take at most, for the run's time limit (start-up comes on top)."""


def options(turns: int, url: str | None, workdir: Path) -> BenchOptions:
    """One caller through the SDK, the server's defaults (its own server unless ``url``)."""
    return BenchOptions(
        url=url,
        time_limit_s=READY_TIMEOUT_S + turns * TURN_BUDGET_S,
        timing=Timing(turn_timeout_s=TURN_TIMEOUT_S, metrics_grace_s=METRICS_GRACE_S),
        workdir=workdir,
        opener=open_sdk_call,
    )


async def run(turns: int, url: str | None, workdir: Path) -> dict[str, Any]:
    """The whole benchmark; the harness's report (not yet written). Cancelling it stops the
    server it started."""
    report = await benchmark(
        options(turns, url, workdir), [questions(turns)], echo=lambda line: print(line, flush=True)
    )
    report["tool"] = f"python -m benchmarks.{NAME}"
    report["options"]["client"] = "openai SDK (client.realtime.connect)"
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("--turns", type=int, default=10, help="questions to ask (default 10)")
    parser.add_argument("--url", help="an already running server, ws://HOST:PORT/v1/realtime")
    parser.add_argument("--out", type=Path, help=f"the output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not espeak_available():
        print("espeak-ng is needed to speak the questions (apt-get install espeak-ng)")
        return 2
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        report = asyncio.run(run(args.turns, args.url, Path(tmp)))
    print(summary_text(report))
    json_path, html_path = write_outputs(report, args.out, name=NAME)
    print(f"\nresults: {json_path}\nreport:  {html_path}")
    return 1 if any(c.get("error") for c in report["configs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
