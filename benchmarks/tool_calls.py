"""Function calling on the embedded LLM: does it call the right tool, and how fast?

Spoken-style requests, three tools, tool_choice ``auto`` (and ``required`` for comparison),
straight on the engine (no audio). For each request: which tool was called (if any), whether
that is the expected one, and the time from the request to the complete call (its StreamEnd).

    .venv/bin/python -m benchmarks.tool_calls [--temperature 0.0] [--out PATH]

Writes ``benchmarks/results/tool_calls-<UTC time>.json``; prints the machine and p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.machine import machine_info
from benchmarks.harness.stats import describe
from pipeline.context import ChatMessage
from pipeline.engines import GenerationOptions, StreamEnd, ToolCallDelta
from pipeline.engines.llm_llama import LlamaLlm, LlamaOptions
from pipeline.engines.tools import ToolSpec
from voice import models

RESULTS = Path(__file__).parent / "results"
SYSTEM = ChatMessage("system", "You are a friendly voice assistant. Answer briefly.")
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
REQUESTS = [
    ("What's the weather in Berlin?", "get_weather"),
    ("Is it going to rain in London today?", "get_weather"),
    ("How warm is it in Madrid right now?", "get_weather"),
    ("Set a timer for five minutes.", "set_timer"),
    ("Can you start a ten minute timer?", "set_timer"),
    ("What time is it?", "get_time"),
    ("Tell me the time, please.", "get_time"),
    ("Who painted the Mona Lisa?", None),
    ("Tell me a short joke.", None),
    ("Thanks, that's all.", None),
]


async def one(llm: LlamaLlm, text: str, options: GenerationOptions) -> dict[str, Any]:
    start = time.perf_counter()
    said, name, arguments, end = "", None, "", None
    async for event in llm.stream([SYSTEM, ChatMessage("user", text)], options):
        if isinstance(event, ToolCallDelta):
            name, arguments = event.name, arguments + event.arguments
        elif isinstance(event, StreamEnd):
            end = event
        else:
            said += event
    assert end is not None
    return {
        "request": text,
        "said": said,
        "called": name,
        "arguments": arguments,
        "finish_reason": end.finish_reason,
        "ms": round((time.perf_counter() - start) * 1000, 1),
        "input_tokens": end.input_tokens,
        "output_tokens": end.output_tokens,
    }


async def run(temperature: float, max_tokens: int) -> dict[str, Any]:
    llm = LlamaLlm(LlamaOptions(model_path=models.smollm2_gguf()))
    llm.warm_up()
    report: dict[str, Any] = {"machine": machine_info(), "model": "SmolLM2-135M-Instruct Q4_1"}
    for choice in ("auto", "required"):
        options = GenerationOptions(max_tokens, temperature, TOOLS, choice)
        await one(llm, "Hello.", options)  # the tools' grammar is built once
        turns = []
        for text, expected in REQUESTS:
            turn = await one(llm, text, options)
            turn["expected"] = expected
            turns.append(turn)
        needed = [t for t in turns if t["expected"]]
        calls = [t for t in turns if t["called"]]
        report[choice] = {
            "turns": turns,
            "right_tool": sum(t["called"] == t["expected"] for t in needed),
            "needing_a_tool": len(needed),
            "called_at_all": len(calls),
            "called_without_need": sum(not t["expected"] for t in calls),
            "call_ms": describe(t["ms"] for t in calls),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = asyncio.run(run(args.temperature, args.max_tokens))
    report["temperature"] = args.temperature
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"tool_calls-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["machine"]))
    for choice in ("auto", "required"):
        r = report[choice]
        for t in r["turns"]:
            print(f"  {choice:8} {t['request']:40} -> {t['called']} {t['arguments']} {t['ms']} ms")
        print(
            f"{choice}: right tool {r['right_tool']}/{r['needing_a_tool']}, calls"
            f" {r['called_at_all']}/{len(REQUESTS)} ({r['called_without_need']} unneeded),"
            f" time to the complete call p50 {r['call_ms']['p50']} ms p95 {r['call_ms']['p95']} ms"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
