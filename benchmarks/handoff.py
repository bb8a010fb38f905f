"""The hand-off's own cost: a session relayed to an end-to-end realtime model, measured like a
cascade one (a preset of the harness, ``voice bench``, ``benchmarks/harness``).

The upstream here is this server itself (``python -m voice serve``, the real models) on
loopback, a real peer of the OpenAI Realtime protocol. The same questions go to it directly
(``direct``), then to a second server whose engine is ``openai-realtime`` pointed at it
(``handoff``): the difference is the relay's. Per turn the harness measures voice-to-voice and
the front's stage marks; for the ``handoff`` configuration ``overhead_ms`` is the relay's own
time on the critical path (the upstream's first audio received → the first frame sent), and
``relay_ms`` below the voice-to-voice difference, both at p50/p95.

    python -m benchmarks.handoff [--turns K] [--out DIR]
    python -m benchmarks.handoff --upstream wss://api.openai.com/v1/realtime \\
        --key-env OPENAI_API_KEY

With ``--upstream`` (a machine that can reach it) the real API is measured the same way: only
the ``handoff`` configuration runs (there is no direct path to compare with).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.harness.audio import espeak_available
from benchmarks.harness.bench import BenchOptions, benchmark, comparisons
from benchmarks.harness.clients import open_sdk_call
from benchmarks.harness.report import RESULTS, summary_text, write_outputs
from benchmarks.harness.runner import Timing
from benchmarks.harness.scenarios import questions
from benchmarks.harness.server import READY_TIMEOUT_S, LocalServer, NamedConfig

NAME = "handoff"
TURN_TIMEOUT_S = 60.0
TURN_BUDGET_S = TURN_TIMEOUT_S + 15.0


def _options(turns: int, workdir: Path, url: str | None, configs: list[NamedConfig]) -> Any:
    return BenchOptions(
        url=url,
        configs=configs,
        time_limit_s=READY_TIMEOUT_S + turns * TURN_BUDGET_S,
        timing=Timing(turn_timeout_s=TURN_TIMEOUT_S, metrics_grace_s=5.0),
        workdir=workdir,
        opener=open_sdk_call,
    )


def handoff_config(upstream: str, key: str = "") -> NamedConfig:
    settings = {
        "handoff.engine": "openai-realtime",
        "handoff.openai_url": upstream,
        "handoff.fallback": "false",  # a failure shows as missed turns, not as the cascade
        "handoff.first_audio_timeout_s": str(TURN_TIMEOUT_S),
    }
    if key:
        settings["handoff.openai_key"] = key
    return NamedConfig("handoff", settings)


async def run(turns: int, workdir: Path, upstream: str | None, key: str) -> dict[str, Any]:
    """Both configurations (one with ``upstream``); the harness's report, not yet written."""
    echo = lambda line: print(line, flush=True)  # noqa: E731
    scenario = [questions(turns)]
    if upstream is not None:
        return await benchmark(
            _options(turns, workdir, None, [handoff_config(upstream, key)]), scenario, echo
        )
    peer = LocalServer({}, workdir / "upstream.log")
    try:
        print(f"[upstream] starting on port {peer.port} ...", flush=True)
        await asyncio.to_thread(peer.wait_ready, READY_TIMEOUT_S)
        url = peer.url("realtime")
        direct = await benchmark(_options(turns, workdir, url, []), scenario, echo)
        relayed = await benchmark(
            _options(turns, workdir, None, [handoff_config(url)]), scenario, echo
        )
    finally:
        await asyncio.to_thread(peer.stop)
    direct["configs"][0]["name"] = "direct"
    relayed["configs"] = [direct["configs"][0], *relayed["configs"]]
    relayed["comparisons"] = comparisons(relayed["configs"])
    relayed["relay_ms"] = relay_cost(*relayed["configs"])
    return relayed


def relay_cost(direct: dict[str, Any], handoff: dict[str, Any]) -> dict[str, Any]:
    """What the relay adds: voice-to-voice p50/p95 of ``handoff`` less ``direct``'s, and the
    front's own ``overhead_ms`` (its share of each turn's critical path)."""
    a = (direct.get("summary") or {}).get("voice_to_voice_ms") or {}
    b = (handoff.get("summary") or {}).get("voice_to_voice_ms") or {}
    delta = {
        q: round(b[q] - a[q], 1) if a.get(q) is not None and b.get(q) is not None else None
        for q in ("p50", "p95")
    }
    return {
        "voice_to_voice_delta_ms": delta,
        "front_overhead_ms": (handoff.get("summary") or {}).get("overhead_ms"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("--turns", type=int, default=8, help="questions to ask (default 8)")
    parser.add_argument("--upstream", help="a real upstream (wss://…/v1/realtime) to measure")
    parser.add_argument("--key-env", default="", help="the variable holding its API key")
    parser.add_argument("--out", type=Path, help=f"the output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    if not espeak_available():
        print("espeak-ng is needed to speak the questions (apt-get install espeak-ng)")
        return 2
    key = os.environ.get(args.key_env, "") if args.key_env else ""
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        report = asyncio.run(run(args.turns, Path(tmp), args.upstream, key))
    report["tool"] = f"python -m benchmarks.{NAME}"
    print(summary_text(report))
    if "relay_ms" in report:
        print(f"\nrelay: {report['relay_ms']}")
    json_path, html_path = write_outputs(report, args.out, name=NAME)
    print(f"\nresults: {json_path}\nreport:  {html_path}")
    return 1 if any(c.get("error") for c in report["configs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
