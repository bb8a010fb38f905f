"""Fuzzing a running server: does any input crash a session other than the one it was sent to,
or the server?

An in-process server (fake engines from ``tests/fakes.py``: instant, deterministic; API keys and
Twilio's signature check on, loopback only) takes, for a bounded time or number of inputs:

- ``--clients`` Realtime WebSockets sending random and mutated client events: the real events
  as they are, mutated one to three fields at a time, a real ``type`` with random fields, any
  JSON, any text, binary frames, deep nesting, now and then a frame over the size limits; each
  reconnects after a random number of frames;
- ``--twilio`` Twilio Media Streams (signed, and now and then unsigned) sending μ-law media
  between mutated and random messages, now and then a ``stop``;
- ``--http`` clients posting mutated and random SDP offers and multipart forms to
  ``/v1/realtime/calls`` (hanging up what was answered), mutated client-secret requests, and raw
  requests with bytes that are not UTF-8 in their headers;
- one well-behaved client that keeps doing turns (a text item, a text-only response) and must
  get every one answered.

What broke: an ``internal_error`` event, an HTTP 5xx other than 503, a log record at ERROR, a
turn of the well-behaved client that failed, sessions or calls still open after every client
left, a server that stopped answering ``/healthz`` or would not stop. Also reported: inputs tried
per kind, error codes, HTTP statuses, how sessions ended, RSS before and after (one process: the
server and the fuzzing clients).

    .venv/bin/python -m benchmarks.fuzz --seconds 300
    .venv/bin/python -m benchmarks.fuzz --seconds 30 --max-inputs 20000 --seed 7

Writes ``benchmarks/results/fuzz-<UTC>.json``; prints a summary with the machine. Exit status 1
when something broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks.fuzz_inputs import (
    REALTIME_EVENTS,
    TEXT_ITEM,
    TWILIO_MESSAGES,
    TWILIO_START,
    Fuzzer,
    realtime_frame,
    sdp_offer,
    twilio_frame,
)
from benchmarks.harness.machine import machine_info
from benchmarks.harness.stats import describe
from tests.fakes import fake_engines
from transports import twilio_signature
from voice.config import load
from voice.server import VoiceServer

RESULTS = Path(__file__).parent / "results"
KEY = "fuzz-key"
TWILIO_TOKEN = "fuzz-twilio-token"
MAX_EVENT_BYTES = 256 * 1024
MAX_FRAME_BYTES = 1024 * 1024
TURN_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- what happened


@dataclass
class Tally:
    inputs: Counter[str] = field(default_factory=Counter)
    """Inputs sent, by ``channel:kind``."""
    errors: Counter[str] = field(default_factory=Counter)
    """Realtime ``error`` events by code."""
    http: Counter[str] = field(default_factory=Counter)
    """HTTP answers by ``path status``."""
    ended: Counter[str] = field(default_factory=Counter)
    """Sessions that ended, by reason (as the server logged it, ids and numbers blanked)."""
    closes: Counter[str] = field(default_factory=Counter)
    """Close codes the fuzzing WebSockets saw, by ``channel code``."""
    broke: list[dict[str, Any]] = field(default_factory=list)
    broke_count: Counter[str] = field(default_factory=Counter)
    known: Counter[str] = field(default_factory=Counter)
    """ERROR records of known upstream issues (``KNOWN``): reported, not counted as broken."""
    turns_ok: int = 0
    turns_failed: list[str] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)

    def failure(self, kind: str, detail: str, sent: object = None) -> None:
        self.broke_count[kind] += 1
        if len(self.broke) < 50:
            self.broke.append({"kind": kind, "detail": detail[:500], "input": repr(sent)[:500]})


KNOWN: dict[str, Callable[[str], bool]] = {
    "aiortc: a call hung up while ICE connects; aiortc's own connect task then fails"
    " (AttributeError 'transport', logged by asyncio; no session affected)": lambda detail: (
        "RTCPeerConnection.__connect" in detail and "no attribute 'transport'" in detail
    ),
}


class _LogWatch(logging.Handler):
    """Log records at ERROR and above are failures; a session's end line says why it ended."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.INFO)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            exc = record.exc_info[1] if record.exc_info else None
            detail = f"{record.name}: {record.getMessage()} ({type(exc).__name__}: {exc})"
            known = next((name for name, match in KNOWN.items() if match(detail)), None)
            if known is not None:
                self.tally.known[known] += 1
            else:
                self.tally.failure("error log", detail)
        elif record.msg == "session %s ended (%s)%s; %s" and isinstance(record.args, tuple):
            self.tally.ended[_blank(str(record.args[1]))] += 1


def _blank(text: str) -> str:
    """A reason without what varies (quoted input, ids, numbers), to count alike ones together."""
    text = re.sub(r"'.*'|\".*\"", "…", text)
    text = re.sub(r"\b(sess|rtc|item|resp|call|event)_[A-Za-z0-9]+", r"\1_…", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:100]


# ---------------------------------------------------------------- the clients


@dataclass
class Run:
    base: str
    tally: Tally
    deadline: float
    max_inputs: int
    seed: int

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")

    def going(self) -> bool:
        return (
            time.monotonic() < self.deadline and sum(self.tally.inputs.values()) < self.max_inputs
        )

    def sent(self, kind: str) -> None:
        self.tally.inputs[kind] += 1


AUTH = {"Authorization": f"Bearer {KEY}"}


async def _drain(ws: aiohttp.ClientWebSocketResponse, run: Run, channel: str) -> None:
    """Read everything the server sends; count errors; note how the server closed."""
    async for msg in ws:
        if msg.type is aiohttp.WSMsgType.TEXT and channel == "realtime":
            event = json.loads(msg.data)
            if event.get("type") == "error":
                code = event["error"].get("code")
                run.tally.errors[str(code)] += 1
                if code == "internal_error":
                    run.tally.failure("internal_error", event["error"]["message"])
    if ws.close_code is not None:
        run.tally.closes[f"{channel} {ws.close_code}"] += 1


async def realtime_client(run: Run, index: int) -> None:
    fz = Fuzzer(random.Random(run.seed * 1000 + index))
    async with aiohttp.ClientSession() as http:
        while run.going():
            try:
                ws = await http.ws_connect(f"{run.ws}/v1/realtime", headers=AUTH, max_msg_size=0)
            except aiohttp.ClientError as exc:
                run.tally.failure("realtime handshake", repr(exc))
                await asyncio.sleep(0.5)
                continue
            async with ws:
                reader = asyncio.create_task(_drain(ws, run, "realtime"))
                for _ in range(fz.rng.randint(20, 400)):
                    if not run.going() or ws.closed:
                        break
                    kind, frame = realtime_frame(fz, (MAX_EVENT_BYTES + 10, MAX_FRAME_BYTES + 10))
                    run.sent(f"realtime:{kind}")
                    await _send(ws, frame)
                    await asyncio.sleep(0.002)
                await ws.close()
                await reader


async def _send(ws: aiohttp.ClientWebSocketResponse, frame: str | bytes) -> None:
    with contextlib.suppress(ConnectionError):  # the server may have closed it meanwhile
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)


async def twilio_client(run: Run, index: int) -> None:
    fz = Fuzzer(random.Random(run.seed * 2000 + index))
    url = f"{run.ws}/v1/twilio/media-stream"
    async with aiohttp.ClientSession() as http:
        while run.going():
            signed = fz.rng.random() < 0.95
            sig = (
                twilio_signature.signature(TWILIO_TOKEN, url)
                if signed
                else fz.rng.randbytes(20).hex()
            )
            run.sent("twilio:connect" if signed else "twilio:bad signature")
            try:
                ws = await http.ws_connect(url, headers={"X-Twilio-Signature": sig})
            except aiohttp.WSServerHandshakeError as exc:
                run.tally.http[f"/v1/twilio/media-stream {exc.status}"] += 1
                if signed or exc.status != 403:
                    run.tally.failure("twilio handshake", f"HTTP {exc.status}", sig)
                continue
            async with ws:
                reader = asyncio.create_task(_drain(ws, run, "twilio"))
                await ws.send_str(json.dumps(TWILIO_MESSAGES[0]))
                await ws.send_str(json.dumps(TWILIO_START))
                for _ in range(fz.rng.randint(20, 500)):
                    if not run.going() or ws.closed:
                        break
                    kind, frame = twilio_frame(fz)
                    run.sent(f"twilio:{kind}")
                    await _send(ws, frame)
                    await asyncio.sleep(0.005)
                await ws.close()
                await reader


async def _post(http: aiohttp.ClientSession, run: Run, path: str, **kw: Any) -> None:
    async with http.post(run.base + path, **kw) as r:
        run.tally.http[f"{path} {r.status}"] += 1
        body = await r.text()
        if r.status >= 500 and r.status != 503:
            run.tally.failure("http 5xx", f"{path} {r.status}: {body[:200]}", kw.get("data"))
        location = r.headers.get("Location")
        if r.status == 201 and location:  # an answered call: hang up at once
            async with http.delete(run.base + location, headers=AUTH) as hung:
                run.tally.http[f"DELETE call {hung.status}"] += 1


async def http_client(run: Run, index: int) -> None:
    fz = Fuzzer(random.Random(run.seed * 3000 + index))
    r = fz.rng
    sdp = {**AUTH, "Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        while run.going():
            roll = r.random()
            try:
                async with asyncio.timeout(30):
                    if roll < 0.35:
                        kind, offer = (
                            sdp_offer(fz)
                            if r.random() < 0.9
                            else ("random offer", fz.text(300, False))
                        )
                        run.sent(f"http:{kind}")
                        await _post(http, run, "/v1/realtime/calls", data=offer, headers=sdp)
                    elif roll < 0.55:
                        run.sent("http:multipart")
                        form = aiohttp.FormData()
                        form.add_field(r.choice(["sdp", "sdp", "session", "x"]), sdp_offer(fz)[1])
                        session = fz.mutate(
                            r.choice(REALTIME_EVENTS[:5])["session"], r.randint(0, 2)
                        )
                        form.add_field(
                            "session", json.dumps(session), content_type="application/json"
                        )
                        await _post(http, run, "/v1/realtime/calls", data=form, headers=AUTH)
                    elif roll < 0.85:
                        run.sent("http:client secret")
                        body = fz.mutate(
                            {
                                "expires_after": {"anchor": "created_at", "seconds": 600},
                                "session": REALTIME_EVENTS[1]["session"],
                            },
                            r.randint(0, 3),
                        )
                        data = json.dumps(body) if r.random() < 0.9 else fz.text(100, False)
                        await _post(
                            http, run, "/v1/realtime/client_secrets", data=data, headers=AUTH
                        )
                    else:
                        run.sent("http:raw bad bytes")
                        await _raw_request(run, fz)
            except (TimeoutError, aiohttp.ClientError) as exc:
                run.tally.failure("http no answer", repr(exc))
            await asyncio.sleep(0.01)


async def _raw_request(run: Run, fz: Fuzzer) -> None:
    """A request aiohttp's client would not send: header values that are not UTF-8."""
    r = fz.rng
    path = r.choice(
        [
            "/v1/realtime/calls",
            "/v1/realtime/client_secrets",
            "/v1/twilio/media-stream",
            "/v1/realtime",
        ]
    )
    junk = r.randbytes(r.randint(1, 20))
    header = r.choice(
        [
            b"Authorization: Bearer ek_" + junk,
            b"Authorization: Bearer " + junk,
            b"X-Twilio-Signature: " + junk,
            b"Origin: http://[" + junk,
            b"Sec-WebSocket-Protocol: openai-insecure-api-key." + junk,
        ]
    )
    host, port = run.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\n"
            + header
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        status = (await reader.readline()).split(b" ")
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        run.tally.http[f"raw {path} {code}"] += 1
        if (code >= 500 and code != 503) or code == 0:
            run.tally.failure("http 5xx", f"raw {path}: HTTP {code}", header)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def well_behaved(run: Run, stop: asyncio.Event) -> None:
    """Text turns, one after another, each of which must be answered."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                await _converse(http, run, stop)
            except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                run.tally.turns_failed.append(f"connection: {exc!r}")
                await asyncio.sleep(0.5)


async def _converse(http: aiohttp.ClientSession, run: Run, stop: asyncio.Event) -> None:
    async with http.ws_connect(f"{run.ws}/v1/realtime", headers=AUTH) as ws:
        await _wait_for(ws, "session.created")
        update = {"output_modalities": ["text"], "audio": {"input": {"turn_detection": None}}}
        await ws.send_json({"type": "session.update", "session": update})
        await _wait_for(ws, "session.updated")
        while not stop.is_set() and not ws.closed:
            await _turn(ws, run)
            await asyncio.sleep(0.2)
    if not stop.is_set():
        run.tally.turns_failed.append(f"the server closed the connection ({ws.close_code})")


async def _turn(ws: aiohttp.ClientWebSocketResponse, run: Run) -> None:
    started = time.perf_counter()
    n = run.tally.turns_ok + len(run.tally.turns_failed)
    item = {**TEXT_ITEM, "content": [{"type": "input_text", "text": f"turn {n}"}]}
    try:
        await ws.send_json({"type": "conversation.item.create", "item": item})
        await ws.send_json({"type": "response.create"})
        done = await _wait_for(ws, "response.done")
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        run.tally.turns_failed.append(f"turn {n}: {exc!r}")
        return
    response = done["response"]
    text = [c.get("text") for o in response["output"] for c in o.get("content", [])]
    if response["status"] != "completed" or not any(text):
        run.tally.turns_failed.append(f"turn {n}: {response['status']} {text}")
        return
    run.tally.turns_ok += 1
    run.tally.turn_ms.append((time.perf_counter() - started) * 1000)


async def _wait_for(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(TURN_TIMEOUT_S):
        while True:
            msg = await ws.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"{msg.type.name} while waiting for {kind}")
            event: dict[str, Any] = json.loads(msg.data)
            if event["type"] == "error":
                raise RuntimeError(f"error while waiting for {kind}: {event['error']}")
            if event["type"] == kind:
                return event


# ---------------------------------------------------------------- the run


def _config(data_dir: str) -> Any:
    return load(
        env={},
        overrides={
            "server.port": "0",
            "server.api_keys": KEY,
            "server.max_sessions": "64",
            "server.max_sessions_per_key": "64",
            "server.max_event_bytes": str(MAX_EVENT_BYTES),
            "server.max_frame_bytes": str(MAX_FRAME_BYTES),
            "server.data_dir": data_dir,
            "twilio.auth_token": TWILIO_TOKEN,
            "webrtc.connect_timeout": "2",
            "webrtc.max_pending_calls": "16",
        },
    )


async def fuzz(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    watch = _LogWatch(tally)
    root = logging.getLogger()
    root.addHandler(watch)
    root.setLevel(logging.INFO)
    for noisy in ("aiohttp.access", "aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    process = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="voice-fuzz-") as data_dir:
        server = VoiceServer(_config(data_dir), fake_engines(["hello"], ["Hi there."]))
        await server.start("127.0.0.1", 0)
        rss_before = process.memory_info().rss
        started = time.monotonic()
        run = Run(
            f"http://127.0.0.1:{server.port}",
            tally,
            started + args.seconds,
            args.max_inputs,
            args.seed,
        )
        stop_turns = asyncio.Event()
        good = asyncio.create_task(well_behaved(run, stop_turns))
        clients = [realtime_client(run, i) for i in range(args.clients)]
        clients += [twilio_client(run, i) for i in range(args.twilio)]
        clients += [http_client(run, i) for i in range(args.http)]
        results = await asyncio.gather(*clients, return_exceptions=True)
        for exc in results:
            if isinstance(exc, BaseException):
                tally.failure("fuzz client died", repr(exc))
        stop_turns.set()
        await good
        elapsed = time.monotonic() - started
        await asyncio.sleep(3.0)  # calls past webrtc.connect_timeout, sessions closing
        leftover = {"sessions": len(server.sessions), "calls": len(server.calls)}
        if any(leftover.values()):
            tally.failure("leak", f"still open after every client left: {leftover}")
        healthy = await _healthy(run.base)
        if not healthy:
            tally.failure("server down", "/healthz did not answer 200")
        rss_after = process.memory_info().rss
        try:
            async with asyncio.timeout(30):
                await server.stop()
            stopped = True
        except TimeoutError:
            stopped = False
            tally.failure("server would not stop", "server.stop() took over 30 s")
    root.removeHandler(watch)
    return _report(args, tally, elapsed, rss_before, rss_after, leftover, healthy, stopped)


async def _healthy(base: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(10),
            http.get(base + "/healthz") as r,
        ):
            return r.status == 200
    except (TimeoutError, aiohttp.ClientError):
        return False


def _report(
    args: argparse.Namespace,
    tally: Tally,
    elapsed: float,
    rss_before: int,
    rss_after: int,
    leftover: dict[str, int],
    healthy: bool,
    stopped: bool,
) -> dict[str, Any]:
    ok = not tally.broke_count and not tally.turns_failed and tally.turns_ok > 0
    return {
        "benchmark": "fuzz",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "args": vars(args),
        "seconds": round(elapsed, 1),
        "inputs": sum(tally.inputs.values()),
        "inputs_by_kind": dict(tally.inputs.most_common()),
        "error_codes": dict(tally.errors.most_common()),
        "http": dict(sorted(tally.http.items())),
        "sessions_ended": dict(tally.ended.most_common()),
        "close_codes": dict(tally.closes.most_common()),
        "well_behaved": {
            "turns_ok": tally.turns_ok,
            "turns_failed": tally.turns_failed[:50],
            "turn_ms": describe(tally.turn_ms),
        },
        "broke": dict(tally.broke_count),
        "known_upstream": dict(tally.known),
        "broke_samples": tally.broke,
        "left_open": leftover,
        "server_up": healthy,
        "server_stopped": stopped,
        "rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "ok": ok,
    }


def summary(report: dict[str, Any]) -> str:
    m, wb = report["machine"], report["well_behaved"]
    lines = [
        f"machine: {m['cpu']}, {m['usable_cores']}/{m['cores']} cores, {m['memory_gb']} GB,"
        f" {m['platform']}, Python {m['python']}",
        f"{report['inputs']} inputs in {report['seconds']} s",
    ]
    lines += [f"  {kind:32} {n}" for kind, n in report["inputs_by_kind"].items()]
    lines.append("error codes: " + ", ".join(f"{c} {n}" for c, n in report["error_codes"].items()))
    lines.append("HTTP: " + ", ".join(f"{k}: {n}" for k, n in report["http"].items()))
    lines.append("sessions ended:")
    lines += [f"  {n:6}  {why}" for why, n in report["sessions_ended"].items()]
    p50, p95 = wb["turn_ms"].get("p50"), wb["turn_ms"].get("p95")
    lines.append(
        f"well-behaved client: {wb['turns_ok']} turns answered, {len(wb['turns_failed'])} failed"
        f" (p50 {p50 and round(p50)} ms, p95 {p95 and round(p95)} ms)"
    )
    lines.append(
        f"server up: {report['server_up']}, stopped: {report['server_stopped']},"
        f" left open: {report['left_open']}, RSS {report['rss_mb']['before']} →"
        f" {report['rss_mb']['after']} MB"
    )
    lines.append("broke: " + (json.dumps(report["broke"]) if report["broke"] else "nothing"))
    lines += [f"  known upstream, {n}x: {what}" for what, n in report["known_upstream"].items()]
    for sample in report["broke_samples"][:10]:
        lines.append(f"  {sample['kind']}: {sample['detail'][:200]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, run: Callable[..., Any] = asyncio.run) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=300.0, help="how long to fuzz (300)")
    parser.add_argument(
        "--max-inputs", type=int, default=10_000_000, help="stop after so many inputs"
    )
    parser.add_argument("--clients", type=int, default=4, help="Realtime fuzzing clients (4)")
    parser.add_argument("--twilio", type=int, default=2, help="Twilio fuzzing streams (2)")
    parser.add_argument("--http", type=int, default=1, help="HTTP fuzzing clients (1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="the JSON report's path")
    args = parser.parse_args(argv)
    report = run(fuzz(args))
    out = args.out or RESULTS / f"fuzz-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(summary(report))
    print(f"report: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
