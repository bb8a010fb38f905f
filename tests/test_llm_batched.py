"""The batched embedded LLM (``llm_batched.py``) with the real bundled model: several
conversations in one llama.cpp context give each the reply it would get alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import aclosing
from typing import Any

import pytest

from pipeline.context import ChatMessage
from pipeline.engines import GenerationOptions, StreamEnd, ToolCallDelta
from pipeline.engines._batch_plan import MIN_SHIFT, Copy, Shift
from pipeline.engines._cpu import CpuJobs
from pipeline.engines.llm_batched import BatchedLlm, BatchedOptions
from pipeline.engines.llm_llama import LlamaOptions
from pipeline.engines.tools import ToolSpec
from voice import models

pytestmark = pytest.mark.models
SYSTEM = ChatMessage("system", "You are a friendly voice assistant. Answer briefly.")
DRAGON = [SYSTEM, ChatMessage("user", "Tell me a story about a brave little dragon.")]
SKY = [SYSTEM, ChatMessage("user", "What color is the sky on a clear day?")]
GREEDY = GenerationOptions(max_tokens=32, temperature=0.0)


def options(n_ctx: int = 2048) -> LlamaOptions:
    return LlamaOptions(model_path=models.smollm2_gguf(), n_ctx=n_ctx, batch_threads=2)


@pytest.fixture(scope="module")
def llm() -> Iterator[BatchedLlm]:
    engine = BatchedLlm(options(), BatchedOptions(parallel=3))
    yield engine
    engine.close()


async def reply(
    llm: BatchedLlm, messages: list[ChatMessage], gen: GenerationOptions = GREEDY
) -> tuple[str, StreamEnd]:
    text, ends = [], []
    async for item in llm.stream(messages, gen):
        if isinstance(item, str):
            text.append(item)
        elif isinstance(item, StreamEnd):
            ends.append(item)
    assert len(ends) == 1
    return "".join(text), ends[0]


async def test_replies_generated_together_equal_each_alone(llm: BatchedLlm) -> None:
    dragon, dragon_end = await reply(llm, DRAGON)
    sky, _ = await reply(llm, SKY)
    assert "dragon" in dragon.lower() and "blue" in sky.lower(), (dragon, sky)
    assert dragon_end.finish_reason == "length" and dragon_end.output_tokens == 32
    together = await asyncio.gather(reply(llm, DRAGON), reply(llm, SKY), reply(llm, DRAGON))
    assert [text for text, _ in together] == [dragon, sky, dragon]
    assert together[0][1] == dragon_end


async def test_a_cancelled_reply_leaves_the_context_usable_by_others(llm: BatchedLlm) -> None:
    sky, _ = await reply(llm, SKY)
    dragon, _ = await reply(llm, DRAGON)
    other = asyncio.create_task(reply(llm, SKY))
    pieces = []
    long = GenerationOptions(max_tokens=120, temperature=0.0)
    async with aclosing(llm.stream(DRAGON, long)) as stream:  # type: ignore[type-var]
        async for item in stream:
            pieces.append(item)
            if len(pieces) == 5:
                break  # a barge-in: the stream is closed mid-reply
    assert (await asyncio.wait_for(other, 60))[0] == sky
    # the cancelled reply's tokens were removed: the same prompt gives the same reply again
    assert (await reply(llm, DRAGON))[0] == dragon
    assert "".join(str(p) for p in pieces) == dragon[: len("".join(str(p) for p in pieces))]


async def test_the_judge_scores_beside_a_reply_in_progress(llm: BatchedLlm) -> None:
    async def p(text: str) -> float:
        value = await llm.end_of_turn([SYSTEM, ChatMessage("user", text)])
        assert value is not None and 0.0 <= value <= 1.0
        return value

    long = GenerationOptions(max_tokens=120, temperature=0.0)
    async with aclosing(llm.stream(DRAGON, long)) as stream:  # type: ignore[type-var]
        first = await anext(stream)
        assert isinstance(first, str)
        finished = [
            await p(t)
            for t in (
                "Why is the sky blue?",
                "Tell me how to make green tea.",
                "What is the capital of France.",  # a period read as any full stop
            )
        ]
        unfinished = [await p(t) for t in ("Can you tell me?", "I would like to book a table for")]
    assert min(finished) > 4 * max(unfinished), (finished, unfinished)
    assert finished[2] >= 0.2, finished  # (vad.eot_llm_complete)
    assert await llm.end_of_turn([SYSTEM]) is None


async def test_a_forced_tool_call_is_valid_json_for_its_schema(llm: BatchedLlm) -> None:
    weather = ToolSpec(
        "get_weather",
        "The weather in a city",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    messages = [SYSTEM, ChatMessage("user", "What is the weather in Paris?")]
    gen = GenerationOptions(max_tokens=40, temperature=0.0, tools=[weather], tool_choice="required")
    deltas = []
    async for item in llm.stream(messages, gen):
        if isinstance(item, ToolCallDelta):
            deltas.append(item)
        elif isinstance(item, StreamEnd):
            assert item.finish_reason == "tool_calls"
    assert deltas and {d.name for d in deltas} == {"get_weather"}
    arguments = json.loads("".join(d.arguments for d in deltas))
    assert isinstance(arguments["city"], str)


def test_closing_the_words_of_a_reply_does_not_cancel_its_call(llm: BatchedLlm) -> None:
    """A reply with ``auto`` tools closes its words' completion at the call marker and goes on
    with a second completion (the call) in the same stream: only the first is cancelled."""
    import threading

    from pipeline.engines import llm_batched

    prompt = llm._fit(DRAGON, 32)[1]
    llm_batched._CANCEL.value = threading.Event()  # (as the stream's thread has it)
    try:
        words = llm._complete(prompt, 32, 0.0)
        pieces = iter(words)
        assert next(pieces)
        words.close()
        call = llm._complete(prompt, 5, 0.0)
        text = "".join(call)
        assert text and call.count == 5 and call.finish == "length"
    finally:
        llm_batched._CANCEL.value = None


async def test_a_prompt_gets_both_threads_only_while_nothing_else_is_on_the_cpu() -> None:
    """Another engine's job on the CPU (a caller's ASR or TTS, counted in the shared
    ``CpuJobs``) makes a prompt step use the generation threads (1) instead of the batch
    threads (2); the reply is the same either way."""
    cpu = CpuJobs()
    engine = BatchedLlm(options(), BatchedOptions(parallel=2, cpu=cpu))
    worker = engine._worker
    calls: list[tuple[int, int]] = []

    class Recording:  # llama_cpp, with llama_set_n_threads recorded
        def __getattr__(self, name: str) -> Any:
            return getattr(llama_cpp, name)

        def llama_set_n_threads(self, ctx: Any, threads: int, batch: int) -> None:
            calls.append((threads, batch))
            llama_cpp.llama_set_n_threads(ctx, threads, batch)

    import llama_cpp

    worker._lib = Recording()
    try:
        alone, _ = await reply(engine, SKY)
        assert calls[0] == (1, 2) and all(batch == 1 for _, batch in calls[1:])
        calls.clear()
        with cpu.job():  # (another caller's speech being recognized)
            beside, _ = await reply(engine, [SYSTEM, ChatMessage("user", "Hi! " + SKY[1].content)])
        assert calls and all(batch == 1 for _, batch in calls)
        assert "blue" in alone.lower() and "blue" in beside.lower(), (alone, beside)
        assert cpu.alone()
    finally:
        engine.close()


@pytest.mark.parametrize(
    "bad", [{"first_words_chunk": -1}, {"tail_rate": -1.0}, {"tail_yield_rate": -1.0}]
)
def test_negative_step_settings_are_refused_before_the_model_loads(bad: dict[str, Any]) -> None:
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="must not be negative"):
        BatchedLlm(options(), BatchedOptions(**bad))


async def test_a_conversation_past_its_window_re_uses_its_cached_turns() -> None:
    """Its oldest turns are dropped to fit; the turns kept are in its slot's cache after them,
    and move back there (``Shift``) instead of being evaluated again. The reply still answers
    the conversation's question, and begins as it does when the same window is evaluated afresh."""
    llm = BatchedLlm(options(n_ctx=512), BatchedOptions(parallel=2))
    shifted: list[Shift] = []
    apply = llm._worker._apply

    def record(ops: list[Any]) -> None:
        shifted.extend(op for op in ops if isinstance(op, Shift))
        apply(ops)

    llm._worker._apply = record  # type: ignore[method-assign]
    try:
        history = [SYSTEM]
        for k in range(6):
            history += [
                ChatMessage("user", f"Tell me something about the number {k}."),
                ChatMessage(
                    "assistant",
                    f"The number {k} comes after {k - 1} and before {k + 1}; people have used"
                    f" it for counting sheep, apples, boats and many other things for ages.",
                ),
            ]
        first, _ = await reply(llm, [*history, ChatMessage("user", "Thanks.")])
        assert not shifted
        later = [*history, ChatMessage("user", "Thanks."), ChatMessage("assistant", first)]
        later += history[1:5]  # two more turns: past the window
        sky, end = await reply(llm, [*later, SKY[1]])
        assert end.input_tokens < 512 - GREEDY.max_tokens  # history was dropped to fit
        assert len(shifted) == 1 and shifted[0].delta >= MIN_SHIFT
    finally:
        llm.close()
    # The moved keys are re-rotated, not recomputed: close to a fresh evaluation of the same
    # window, not bit-equal (the greedy replies part after "The sky on a clear day is" here).
    fresh_llm = BatchedLlm(options(n_ctx=512), BatchedOptions(parallel=2))
    try:
        fresh, fresh_end = await reply(fresh_llm, [*later, SKY[1]])
    finally:
        fresh_llm.close()
    assert fresh_end.input_tokens == end.input_tokens  # the same window was kept
    assert "sky" in sky.lower() and sky.split()[:4] == fresh.split()[:4], (sky, fresh)


async def test_warming_up_with_the_instructions_leaves_them_cached_for_the_first_caller() -> None:
    llm = BatchedLlm(options(n_ctx=512), BatchedOptions(parallel=2))
    ops: list[Any] = []
    apply = llm._worker._apply

    def record(batch: list[Any]) -> None:
        ops.extend(batch)
        apply(batch)

    llm._worker._apply = record  # type: ignore[method-assign]
    try:
        llm.warm_up(SYSTEM.content)
        ops.clear()
        sky, _ = await reply(llm, SKY)
        assert "blue" in sky.lower(), sky
        copied = [op for op in ops if isinstance(op, Copy)]
        assert copied and copied[0].length >= 10  # the system prompt, evaluated at warm-up
    finally:
        llm.close()


@pytest.mark.parametrize("replies_batched", [True, False])
async def test_a_step_of_several_replies_gets_both_threads_with_batch_threads_replies(
    replies_batched: bool,
) -> None:
    """Two replies generated together: their shared steps (no prompt in them) use the batch
    threads (2) with ``batch_threads_replies``, the generation threads (1) without."""
    engine = BatchedLlm(
        options(), BatchedOptions(parallel=2, batch_threads_replies=replies_batched)
    )
    worker = engine._worker
    threads: list[int] = []
    steps: list[tuple[int, int]] = []  # (batch threads, replies) of each step without a prompt

    class Recording:  # llama_cpp, with llama_set_n_threads recorded
        def __getattr__(self, name: str) -> Any:
            return getattr(llama_cpp, name)

        def llama_set_n_threads(self, ctx: Any, n: int, batch: int) -> None:
            threads.append(batch)
            llama_cpp.llama_set_n_threads(ctx, n, batch)

    import llama_cpp

    decode_step = worker._decode_step

    def recorded(entries: list[Any]) -> None:
        if not any(e.job.prefilling for e in entries):
            steps.append((threads[-1], len(entries)))
        decode_step(entries)

    worker._lib = Recording()
    worker._decode_step = recorded  # type: ignore[method-assign]
    try:
        sky, dragon = await asyncio.gather(reply(engine, SKY), reply(engine, DRAGON))
        assert sky[0] and dragon[0]
        together = [batch for batch, n in steps if n == 2]
        assert together, steps  # (32 tokens each: they shared steps)
        assert set(together) == ({2} if replies_batched else {1})
        assert all(batch == 1 for batch, n in steps if n == 1)
    finally:
        engine.close()
