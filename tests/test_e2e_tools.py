"""Function calling end to end, on the real models: the official ``openai`` SDK declares a tool,
speaks a request that calls it, returns the output and hears the answer; the same through a
remote LLM (``python -m llama_cpp.server`` with its function-calling chat format); and a phone
caller over Twilio using one of the server's own tools. Every Realtime event is validated
against the SDK's models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from pipeline.audio import resample
from pipeline.engines import Engines
from pipeline.engines.llm_openai import OpenAiCompatibleLlm, RemoteLlmOptions
from voice.server import VoiceServer

from .conftest import espeak
from .conftest import test_config as base_config
from .realtime_client import Caller
from .test_e2e_twilio import PHONE_QUESTION, FakeTwilio, new_session_id
from .test_tools import tool_server  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.models]
TURN_TIMEOUT = 90.0
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    },
}
NAMED = {"type": "function", "name": "get_weather"}


def function_calls(done: dict[str, object]) -> list[dict[str, str]]:
    output = done["response"]["output"]  # type: ignore[index]
    return [item for item in output if item["type"] == "function_call"]


async def test_a_spoken_request_calls_a_tool_and_the_answer_is_spoken(
    server: VoiceServer, engines: Engines
) -> None:
    async with Caller(server.port) as caller:  # type: ignore[arg-type]
        await caller.send(
            {"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": NAMED}}
        )
        caller.say(espeak("What is the weather in Paris today?", rate=24_000))
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "the call")
        (call,) = function_calls(done)
        arguments = json.loads(call["arguments"])
        assert isinstance(arguments["city"], str) and arguments["city"]
        deltas = caller.of("response.function_call_arguments.delta")
        assert "".join(d["delta"] for d in deltas) == call["arguments"]

        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        await caller.send({"type": "conversation.item.create", "item": output})
        await caller.send({"type": "response.create", "response": {"tool_choice": "none"}})
        done_both = await caller.wait_for(lambda: caller.response_done(2), TURN_TIMEOUT, "answer")
    answer = done_both[1]["response"]
    assert answer["status"] == "completed"
    assert not function_calls(done_both[1])
    spoken = answer["output"][0]["content"][0]["transcript"]
    assert spoken.strip()
    audio = caller.audio_of(answer["id"])
    heard = await engines.asr.transcribe(resample(audio, 24_000, 16_000))
    assert heard.strip(), "the answer should be speech"


@pytest.fixture
async def remote_server(tool_server: str, engines: Engines) -> AsyncIterator[VoiceServer]:  # noqa: F811
    llm = OpenAiCompatibleLlm(RemoteLlmOptions(base_url=tool_server, model="smollm2", n_ctx=1024))
    server = VoiceServer(base_config(), replace(engines, llm=llm, judge=None))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()
    await llm.aclose()


async def test_the_remote_engine_calls_tools_natively(remote_server: VoiceServer) -> None:
    async with Caller(remote_server.port) as caller:  # type: ignore[arg-type]
        ask = {"type": "input_text", "text": "What is the weather in Berlin?"}
        await caller.send(
            {
                "type": "session.update",
                "session": {
                    "tools": [WEATHER],
                    "tool_choice": NAMED,
                    "output_modalities": ["text"],
                },
            }
        )
        await caller.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [ask]},
            }
        )
        await caller.send({"type": "response.create"})
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "the call")
        (call,) = function_calls(done)
        assert isinstance(json.loads(call["arguments"])["city"], str)
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "rainy"}
        await caller.send({"type": "conversation.item.create", "item": output})
        await caller.send({"type": "response.create", "response": {"tool_choice": "none"}})
        done_both = await caller.wait_for(lambda: caller.response_done(2), TURN_TIMEOUT, "answer")
    answer = done_both[1]["response"]
    assert answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["text"].strip()
    assert not caller.of("response.output_audio.delta")


@pytest.fixture
async def tool_serving(engines: Engines) -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.server.tools = "pipeline.tools.examples"
    config.llm.tool_choice = "get_current_time"
    config.llm.temperature = 0.0  # the arguments the model picks are sampled: one answer here
    server = VoiceServer(config, engines)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_a_phone_caller_uses_a_server_side_tool(tool_serving: VoiceServer) -> None:
    before = set(tool_serving.sessions)
    async with FakeTwilio(tool_serving.port) as twilio:  # type: ignore[arg-type]
        await twilio.start()
        await twilio.wait_for(lambda: set(tool_serving.sessions) - before, 10, "the session")
        session_id = new_session_id(tool_serving, before)
        twilio.say(espeak(PHONE_QUESTION, rate=8_000))
        # the call (a reply without audio: no mark), the tool's output, then the spoken answer
        await twilio.wait_for(lambda: twilio.of("mark"), TURN_TIMEOUT * 2, "the answer's mark")
        await twilio.stop()
    async with asyncio.timeout(30):
        record = await tool_serving.wait_ended(session_id)
    items: list[dict[str, str]] = record["items"]  # type: ignore[assignment]
    kinds = [item.get("type", "message") for item in items]
    assert "function_call" in kinds and "function_call_output" in kinds, items
    call = items[kinds.index("function_call")]
    assert call["name"] == "get_current_time"
    output = json.loads(items[kinds.index("function_call_output")]["text"])
    assert {"time", "date", "timezone"} <= set(output), (call, output)
    after = items[kinds.index("function_call_output") + 1 :]
    assert any(i["role"] == "assistant" and i["text"].strip() for i in after), items


async def test_text_only_and_out_of_band_responses_through_the_sdk(server: VoiceServer) -> None:
    async with Caller(server.port) as caller:  # type: ignore[arg-type]
        ask = {"type": "input_text", "text": "Name a colour."}
        await caller.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "output_modalities": ["text"],
                    "metadata": {"topic": "colour"},
                    "input": [{"type": "message", "role": "user", "content": [ask]}],
                    "max_output_tokens": 16,
                },
            }
        )
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "response.done")
    response = done["response"]
    assert response["metadata"] == {"topic": "colour"}
    assert response["conversation_id"] is None
    assert response["output_modalities"] == ["text"]
    assert response["output"][0]["content"][0]["text"].strip()
    assert not caller.of("response.output_audio.delta")
    assert not caller.of("conversation.item.added")  # nothing joined the conversation
    assert caller.of("response.output_text.delta")
