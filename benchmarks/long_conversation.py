"""The first token of each turn of one long conversation, past the point where it outgrows the
LLM's context window, with the batched engine's context shift and without it.

A conversation longer than its window (``llm.parallel_ctx`` tokens less the reply's
``max_tokens``) loses its oldest turns (``pipeline/context_fit.py``, down to 70 % of the budget
so that the prompt's prefix then stays put for a few turns). The prompt that follows is the
system prompt and the turns kept — which the slot's cache holds already, after the dropped ones.
With the shift (``pipeline/engines/_batch_plan.py``, ``Shift``) those cached tokens move back over
the dropped turns; without it they are evaluated again, hundreds of tokens at the turn the
conversation overflows. This asks the harness's questions in one conversation with the bundled
model and the server's default instructions and reply length, once each way in the same process,
and reports the time from the request to the first token per turn: all turns, and the turns
where history was dropped.

    python -m benchmarks.long_conversation [--turns N] [--window TOKENS] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness.machine import machine_info
from benchmarks.harness.report import write_json
from benchmarks.harness.scenarios import QUESTIONS
from benchmarks.harness.stats import describe
from pipeline.context import ChatMessage
from pipeline.engines import GenerationOptions, StreamEnd
from pipeline.engines._batch_plan import Shift
from pipeline.engines.llm_batched import BatchedLlm, BatchedOptions
from pipeline.engines.llm_llama import LlamaOptions
from voice import models
from voice.config import load

NAME = "long_conversation"


async def conversation(shift: bool, turns: int, window: int) -> list[dict[str, Any]]:
    config = load(None, env={})
    llm = BatchedLlm(
        LlamaOptions(
            model_path=models.smollm2_gguf(),
            n_ctx=window,
            threads=config.llm.threads,
            batch_threads=config.llm.batch_threads,
        ),
        BatchedOptions(parallel=2),
    )
    worker = llm._worker  # (the bench reaches in: the switch is not a setting)
    worker._plan.shift = shift and worker._plan.shift
    shifts: list[Shift] = []
    apply = worker._apply

    def record(ops: list[Any]) -> None:
        shifts.extend(op for op in ops if isinstance(op, Shift))
        apply(ops)

    worker._apply = record  # type: ignore[method-assign]
    gen = GenerationOptions(max_tokens=config.llm.max_tokens, temperature=config.llm.temperature)
    messages = [ChatMessage("system", config.pipeline.instructions)]
    rows: list[dict[str, Any]] = []
    previous_prompt = 0
    try:
        for k in range(turns):
            messages.append(ChatMessage("user", QUESTIONS[k % len(QUESTIONS)]))
            before, text = len(shifts), []
            start, first, end = time.perf_counter(), None, None
            async for item in llm.stream(messages, gen):
                if isinstance(item, str):
                    first = first if first is not None else time.perf_counter() - start
                    text.append(item)
                elif isinstance(item, StreamEnd):
                    end = item
            messages.append(ChatMessage("assistant", "".join(text)))
            prompt = end.input_tokens if end is not None else 0
            rows.append(
                {
                    "turn": k + 1,
                    "first_token_ms": None if first is None else round(first * 1000, 1),
                    "prompt_tokens": prompt,
                    "history_dropped": prompt < previous_prompt,
                    "shifted_tokens": sum(op.delta for op in shifts[before:]),
                }
            )
            previous_prompt = prompt
    finally:
        llm.close()
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [r["first_token_ms"] for r in rows if r["first_token_ms"] is not None]
    dropped = [r["first_token_ms"] for r in rows if r["history_dropped"] and r["first_token_ms"]]
    return {
        "first_token_ms": describe(firsts),
        "first_token_ms_when_history_dropped": describe(dropped),
        "turns_with_history_dropped": len(dropped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=24, help="questions asked (24)")
    parser.add_argument(
        "--window", type=int, default=1024, help="the conversation's context (llm.parallel_ctx)"
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args()
    runs = {
        name: asyncio.run(conversation(name == "shift", args.turns, args.window))
        for name in ("no_shift", "shift")
    }
    report = {
        "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"turns": args.turns, "window": args.window},
        "summary": {name: summarize(rows) for name, rows in runs.items()},
        "turns": runs,
    }
    m = report["machine"]
    print(f"machine: {m.get('cpu')}, {m.get('usable_cores')} cores, Python {m.get('python')}")
    print(f"{args.turns} turns, a {args.window}-token window; request -> first token, ms:")
    for name, s in report["summary"].items():
        a, d = s["first_token_ms"], s["first_token_ms_when_history_dropped"]
        print(
            f"  {name:>8}: all turns p50 {a.get('p50')} p95 {a.get('p95')} max {a.get('max')};"
            f" the {s['turns_with_history_dropped']} turns where history was dropped:"
            f" p50 {d.get('p50')} p95 {d.get('p95')}"
        )
    print(f"results: {write_json(report, NAME, args.out)}")


if __name__ == "__main__":
    main()
