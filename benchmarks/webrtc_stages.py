"""Where the time of a WebRTC turn goes, hop by hop, for the aiortc caller of ``voice bench
--protocol webrtc``: the caller and the server in one process inside a private network namespace
(``tests/netns.py``), every hop stamped on one clock.

For each question (the harness's ``questions`` preset, spoken by espeak-ng at 48 kHz)::

    the caller hands its last audible 20 ms frame to aiortc                       t0
    uplink      the server's session has that frame (Opus, RTP, jitter buffer, decode)
    server      the reply's first audio is queued on the track (VAD, turn end, ASR, LLM, TTS:
                the server's own stages are kept beside)
    track wait  the track releases that frame (its 20 ms slots)
    quiet lead  the track releases the reply's first audible frame
    downlink    the caller has that frame decoded (Opus, RTP, jitter buffer, decode)

The hops add up to the caller's voice-to-voice time (``residual`` is what they miss). Every run
asks the questions twice: with aiortc's own receive jitter buffer on both peers (``prefetch=4``,
as before ``transports/webrtc_jitter.py``) and with the arrival-order buffer the server and the
harness now use.

    python -m benchmarks.webrtc_stages [--turns K] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, Packet

from benchmarks.harness.audio import is_loud
from benchmarks.harness.clients import WEBRTC_RATE
from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import RESULTS, write_json
from benchmarks.harness.scenarios import RenderedTurn, Renderer, questions
from benchmarks.harness.stats import describe
from benchmarks.harness.timeline import AUDIO, METRICS, Ev
from benchmarks.harness.webrtc_client import MicrophoneTrack, WebRtcCall
from transports.webrtc import WebRtcCall as ServerCall
from transports.webrtc import downmix

NAME = "webrtc_stages"
HOPS = ("uplink", "server", "track_wait", "quiet_lead", "downlink", "residual")
TURN_TIMEOUT_S = 60.0
SETTLE_S = 1.5
"""Silence after each reply before the next question (the caller's own pause)."""
MODES = {"aiortc_buffer": False, "arrival_order": True}
"""Each pass: whether both peers decode packets as they arrive."""
log = logging.getLogger("benchmarks.webrtc_stages")


class ProbedMicrophone(MicrophoneTrack):
    """The caller's microphone, stamping each frame as aiortc takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[tuple[float, bool]] = []

    async def recv(self) -> AudioFrame | Packet:
        frame = await super().recv()
        assert self.taken is not None
        self.handed.append((time.perf_counter(), is_loud(self.taken)))
        return frame


@dataclass(slots=True)
class ServerProbe:
    """Stamps on the server's side of one call: each caller frame reaching the session, each
    push onto the track, each reply frame the track releases."""

    arrived: list[float] = field(default_factory=list)
    pushed: list[float] = field(default_factory=list)
    released: list[tuple[float, int, bool]] = field(default_factory=list)
    """(when, pts, audible) of every frame of reply audio (not the silence between)."""

    def attach(self, call: ServerCall) -> None:
        track = call.track
        push, recv, release = track.push, track.recv, track._release
        taken: list[np.ndarray] = []

        def probed_push(samples: np.ndarray, item_id: str | None = None) -> None:
            self.pushed.append(time.perf_counter())
            push(samples, item_id)

        def probed_release() -> np.ndarray:
            taken.append(release())
            return taken[-1]

        async def probed_recv() -> AudioFrame | Packet:
            taken.clear()
            frame = await recv()  # (an Opus packet, when the track encodes itself)
            if taken:
                audible = is_loud(taken[-1])
                self.released.append((time.perf_counter(), int(frame.pts or 0), audible))
            return frame

        track.push = probed_push  # type: ignore[method-assign]
        track.recv = probed_recv  # type: ignore[method-assign]
        track._release = probed_release  # type: ignore[method-assign]
        call.session.input_taps.append(self._arrived)

    def _arrived(self, samples: np.ndarray, rate: int) -> None:
        self.arrived.append(time.perf_counter())


class ProbedCall(WebRtcCall):
    """The harness's WebRTC caller, stamping every decoded frame, with the server's side of its
    call probed (and given aiortc's own buffer back when ``receive_on_arrival`` is False)."""

    def __init__(self, url: str, server: Any, on_arrival: bool) -> None:
        super().__init__(url)
        self.receive_on_arrival = on_arrival
        self.track: ProbedMicrophone = ProbedMicrophone()
        self.decoded: list[tuple[float, int]] = []
        self.probe = ServerProbe()
        self._server = server

    async def _post_offer(self, sdp: str) -> str:
        answer = await super()._post_offer(sdp)
        assert self.location is not None
        call: ServerCall = self._server.calls[self.location.rsplit("/", 1)[-1]]
        if not self.receive_on_arrival:  # no packet can have come yet: ICE has not started
            for transceiver in call.pc.getTransceivers():
                receiver = transceiver.receiver
                receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=4)  # type: ignore[attr-defined]
        self.probe.attach(call)
        return answer

    async def _listen(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.perf_counter()
                if not isinstance(frame, AudioFrame):
                    continue
                self.decoded.append((now, int(frame.pts or 0)))
                if is_loud(downmix(frame)):
                    self._heard(now)  # (the harness's caller: which reply it is)
        except MediaStreamError:
            return


async def ask(call: ProbedCall, turn: RenderedTurn) -> dict[str, Any]:
    """One question; the hops of its answer."""
    start = len(call.events)
    said = call.mic.say(turn.segments, turn.script.pauses_ms)
    t0 = await asyncio.wait_for(asyncio.shield(said[-1].end), turn.speech_s + 30)
    deadline = time.perf_counter() + TURN_TIMEOUT_S

    def heard(ev: Ev | None) -> Ev | None:
        return ev if ev is not None and ev.kind == AUDIO and ev.loud and ev.t > t0 else None

    reply = await call.until(heard, start, deadline)
    if reply is None:
        return {"missed": True}

    def metrics(ev: Ev | None) -> Ev | None:
        return (
            ev if ev is not None and ev.kind == METRICS and ev.response == reply.response else None
        )

    marks = await call.until(metrics, start, deadline + TURN_TIMEOUT_S)
    await asyncio.sleep(SETTLE_S)
    try:
        return hops(call, t0, reply.t, (marks.metrics if marks else None) or {})
    except ValueError as exc:  # kept in the report, left out of the statistics
        return {"missed": True, "error": str(exc)}


def hops(call: ProbedCall, t0: float, heard: float, stages: dict[str, float]) -> dict[str, Any]:
    """The turn ended by the caller at ``t0`` and answered audibly at ``heard``, hop by hop."""
    probe = call.probe
    handed = call.track.handed
    # the caller's last audible frame (aiortc takes it just after the microphone's mark, t0)
    last = max(i for i, (t, loud) in enumerate(handed) if loud and t < heard)
    arrived = probe.arrived[last] if last < len(probe.arrived) else None
    push = next((t for t in probe.pushed if t > t0), None)
    first = next((r for r in probe.released if push is not None and r[0] >= push), None)
    loud = next((r for r in probe.released if push is not None and r[0] >= push and r[2]), None)
    if push is None or first is None or loud is None or not call.decoded:
        raise ValueError("a probe saw no reply audio")
    decoded = min(call.decoded, key=lambda d: abs(d[1] - loud[1]) if d[0] >= loud[0] else 1e12)
    out: dict[str, float | None] = {
        "voice_to_voice": heard - t0,
        "uplink": None if arrived is None else arrived - handed[last][0],
        "server": None if arrived is None else push - arrived,
        "track_wait": first[0] - push,
        "quiet_lead": loud[0] - first[0],
        "downlink": decoded[0] - loud[0],
    }
    out["residual"] = (heard - t0) - sum(v for k, v in out.items() if k != "voice_to_voice" and v)
    ms = {k: None if v is None else round(v * 1000, 1) for k, v in out.items()}
    return {"missed": False, "hops_ms": ms, "server_stages_ms": stages}


async def one_pass(
    server: Any, base: str, turns: list[RenderedTurn], on_arrival: bool
) -> list[dict[str, Any]]:
    url = f"{base}/v1/realtime/calls"
    call = ProbedCall(url, server, on_arrival)
    async with call:
        await asyncio.sleep(SETTLE_S)  # the caller listens a moment before speaking
        return [await ask(call, turn) for turn in turns]


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [t for t in turns if not t["missed"]]
    keys = ("voice_to_voice", *HOPS)
    out: dict[str, Any] = {k: describe(t["hops_ms"][k] for t in answered) for k in keys}
    stages = sorted({s for t in answered for s in t["server_stages_ms"]})
    out["server_stages"] = {
        s: describe(t["server_stages_ms"].get(s) for t in answered) for s in stages
    }
    out["missed"] = len(turns) - len(answered)
    return out


async def inside(count: int) -> dict[str, Any]:
    from tests.netns import SERVER_IP
    from voice.config import load
    from voice.engines import close_engines, load_engines, warm_up
    from voice.server import VoiceServer

    overrides = {"server.port": "0", "server.allow_unauthenticated": "true", "sip.enabled": "false"}
    config = load(overrides=overrides)
    loaded = load_engines(config)
    warm_up(loaded.engines, config.pipeline.instructions)  # as the server does
    server = VoiceServer(config, loaded.engines)
    port = await server.start(SERVER_IP, 0)
    rendered = await asyncio.to_thread(Renderer(WEBRTC_RATE).render, questions(count))
    report: dict[str, Any] = {}
    try:
        for mode, on_arrival in MODES.items():
            print(f"{mode}: {count} questions ...", flush=True)
            turns = await one_pass(server, f"http://{SERVER_IP}:{port}", rendered.turns, on_arrival)
            report[mode] = {"summary": summary(turns), "turns": turns}
    finally:
        await server.stop()
        close_engines(loaded.engines)
    return report


def print_summary(report: dict[str, Any]) -> None:
    m = report["machine"]
    print("\n== a WebRTC turn, hop by hop (aiortc caller; p50 / p95 ms) ==")
    print(f"machine: {m['cpu']}, {m['usable_cores']}/{m['cores']} cores usable, {m['platform']}")
    print(f"{'':<16}" + "".join(f"{mode:>22}" for mode in MODES))
    for hop in ("voice_to_voice", *HOPS):
        cells = []
        for mode in MODES:
            s = report[mode]["summary"][hop]
            cells.append(f"{s['p50']!s:>12} / {s['p95']!s:<7}")
        print(f"{hop:<16}" + "".join(f"{c:>22}" for c in cells))


def host(args: argparse.Namespace) -> int:
    from tests import netns

    reason = netns.available()
    if reason is not None:
        print(f"cannot run: {reason}")
        return 2
    started = datetime.now(UTC).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        out = Path(tmp) / "inside.json"
        budget = 300 + 2 * args.turns * (TURN_TIMEOUT_S + 10)
        try:
            measured = netns.run_scenarios(
                f"benchmarks.{NAME}", out, "--inside", "--turns", str(args.turns), timeout=budget
            )
        except AssertionError as exc:
            print(exc, file=sys.stderr)
            return 1
    report = {
        "started_utc": started,
        "machine": machine_info(),
        "settings": {
            "turns": args.turns,
            "caller": "benchmarks.harness.webrtc_client.WebRtcCall (aiortc), 48 kHz espeak-ng",
            "network": "veth pair in a private network namespace (tests/netns.py), one process",
        },
        **measured,
    }
    print_summary(report)
    print(f"results: {write_json(report, NAME, args.out)}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__)
    parser.add_argument("inside_out", nargs="?", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, default=6, help="questions per pass (default 6)")
    parser.add_argument("--out", type=Path, help=f"the output folder (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inside:
        logging.basicConfig(level=logging.WARNING)
        report = asyncio.run(inside(args.turns))
        args.inside_out.write_text(json.dumps(report, indent=1))
        return 0
    return host(args)


if __name__ == "__main__":
    sys.exit(main())
