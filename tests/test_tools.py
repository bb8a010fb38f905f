"""Function calling at the engine level: tool specs and their checks, the call grammar and
the text handling around it (no model), then the embedded engine (SmolLM2-135M) and a real
``python -m llama_cpp.server`` (``--chat_format chatml-function-calling``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_cpp.llama_grammar import json_schema_to_gbnf

from pipeline.context import ChatMessage, ToolCall
from pipeline.engines import GenerationOptions, LlmEvent, StreamEnd, ToolCallDelta
from pipeline.engines._llama_tools import (
    MARKER,
    CallParser,
    GrammarCache,
    MarkerScanner,
    call_schema,
    template_message,
    tools_message,
)
from pipeline.engines.llm_llama import LlamaLlm, LlamaOptions
from pipeline.engines.llm_openai import OpenAiCompatibleLlm, RemoteLlmOptions
from pipeline.engines.tools import ToolSpec, argument_problems, check_tool, check_tools
from pipeline.errors import EngineError
from voice import models

from .test_engines import _free_port, _wait_listening

WEATHER = ToolSpec(
    "get_weather",
    "Get the current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIMER = ToolSpec(
    "set_timer",
    "Start a countdown timer.",
    {
        "type": "object",
        "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}},
        "required": ["minutes"],
    },
)
SYSTEM = ChatMessage("system", "You are a friendly voice assistant. Answer briefly.")
QUESTION = ChatMessage("user", "What is the weather in Paris?")
ANSWERED = [
    SYSTEM,
    QUESTION,
    ChatMessage("assistant", "", [ToolCall("call_1", "get_weather", '{"city": "Paris"}')]),
    ChatMessage("tool", "sunny, 21 C", tool_call_id="call_1"),
]


# -- specs and checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ToolSpec("get weather"), "letters, digits"),
        (ToolSpec("f", parameters={"type": "string"}), "type object"),
        (ToolSpec("f", parameters={"type": "object", "properties": []}), "properties"),
        (ToolSpec("f", parameters={"properties": {"x": {"type": "text"}}}), "unknown type"),
        (ToolSpec("f", parameters={"properties": {"x": 3}}), "parameters.properties.x"),
        (ToolSpec("f", parameters={"required": "x"}), "required"),
        (ToolSpec("f", parameters={"$ref": "https://x.org/s.json"}), "local references"),
        (ToolSpec("f", parameters={"properties": {"x": {"enum": []}}}), "enum"),
    ],
)
def test_check_tool_refuses_what_cannot_be_a_tool(spec: ToolSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        check_tool(spec)
    assert repr(spec.name) in str(err.value)


def test_check_tools_accepts_good_tools_and_refuses_duplicates_and_unknown_choices() -> None:
    check_tools([WEATHER, TIMER], "set_timer")
    check_tools([WEATHER, TIMER], "required")
    with pytest.raises(ValueError, match="unique"):
        check_tools([WEATHER, WEATHER])
    with pytest.raises(ValueError, match="tool_choice"):
        check_tools([WEATHER], "set_timer")


def test_argument_problems() -> None:
    schema = TIMER.parameters
    assert argument_problems({"minutes": 5}, schema) == []
    assert argument_problems({"minutes": 5, "label": "tea"}, schema) == []
    assert argument_problems({}, schema) == ["arguments.minutes is required"]
    assert argument_problems({"minutes": "5"}, schema) == [
        "arguments.minutes must be of type integer"
    ]
    assert argument_problems({"minutes": True}, schema)  # a bool is no number
    assert argument_problems([], schema) == ["arguments must be of type object"]
    closed = {**schema, "additionalProperties": False}
    assert argument_problems({"minutes": 1, "x": 2}, closed) == [
        "arguments.x is not a known property"
    ]
    assert argument_problems("c", {"enum": ["a", "b"]}) == ["arguments must be one of ['a', 'b']"]


# -- the call grammar and the text around it ------------------------------------------------


def test_the_call_schema_names_each_tool_and_becomes_a_grammar() -> None:
    schema = call_schema([WEATHER, TIMER])
    assert [alt["properties"]["name"] for alt in schema["oneOf"]] == [
        {"const": "get_weather"},
        {"const": "set_timer"},
    ]
    assert call_schema([WEATHER])["properties"]["arguments"] == WEATHER.parameters
    gbnf = json_schema_to_gbnf(json.dumps(schema))
    assert '"\\"get_weather\\""' in gbnf and '"\\"set_timer\\""' in gbnf


def test_grammars_are_built_once_per_tool_set_and_failures_name_the_tool() -> None:
    checked: list[str] = []

    def parses(gbnf: str) -> bool:
        checked.append(gbnf)
        return True

    cache = GrammarCache(parses)
    first = cache.get([WEATHER, TIMER])
    assert cache.get([WEATHER, TIMER]) is first
    assert len(checked) == 3  # each tool, then the set; not again
    broken = ToolSpec("broken", parameters={"properties": {"x": {"$ref": "#/$defs/missing"}}})
    check_tool(broken)  # a well-formed schema, whose reference does not resolve
    with pytest.raises(ValueError, match=r"tool .broken.: llama\.cpp cannot make a grammar"):
        cache.get([WEATHER, broken])
    with pytest.raises(ValueError, match=r"tool .get_weather.: llama\.cpp rejected"):
        GrammarCache(lambda gbnf: False).get([WEATHER])


def test_the_call_parser_streams_exactly_the_arguments() -> None:
    text = '{"name": "set_timer", "arguments": { "minutes": 5, "label": "tea {x}" } }'
    for step in (1, 3, 7):
        parser = CallParser([WEATHER, TIMER])
        pieces = [parser.feed(text[i : i + step]) for i in range(0, len(text), step)]
        call = parser.finish()
        assert parser.name == "set_timer" and call.name == "set_timer"
        assert "".join(pieces) == call.arguments == '{ "minutes": 5, "label": "tea {x}" }'
        assert call.call_id.startswith("call_") and len(call.call_id) == 29


def test_the_call_parser_refuses_an_invalid_call() -> None:
    parser = CallParser([TIMER])
    parser.feed('{"name": "set_timer", "arguments": {"minutes": "five"}}')
    with pytest.raises(ValueError, match="minutes must be of type integer"):
        parser.finish()
    parser = CallParser([TIMER])
    parser.feed('{"name": "set_tim')
    with pytest.raises(ValueError, match="not JSON"):
        parser.finish()


def test_the_marker_scanner_holds_back_what_may_begin_the_marker() -> None:
    scanner = MarkerScanner()
    assert scanner.feed("Let me check. <") == "Let me check. "
    assert scanner.feed("b") == "<b"  # not the marker after all
    assert scanner.feed(" <tool") == " "
    assert scanner.feed('_call>{"name"') == ""
    assert scanner.found and scanner.text == "Let me check. <b "
    plain = MarkerScanner()
    assert plain.feed("a <") == "a " and plain.flush() == "<" and not plain.found


def test_calls_and_tools_are_written_for_a_template_without_tools() -> None:
    call = ANSWERED[2]
    assert template_message(call) == {
        "role": "assistant",
        "content": MARKER + '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    }
    assert template_message(ANSWERED[3]) == {"role": "tool", "content": "sunny, 21 C"}
    described = tools_message([WEATHER, TIMER], forced=False).content
    assert "- get_weather(city: string): Get the current weather in a city." in described
    assert "- set_timer(minutes: integer, label?: string): Start a countdown timer." in described
    assert MARKER in described and "Otherwise" in described


# -- the embedded engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm() -> LlamaLlm:
    return LlamaLlm(LlamaOptions(model_path=models.smollm2_gguf()))


async def collect(
    model: object, messages: list[ChatMessage], options: GenerationOptions
) -> list[LlmEvent]:
    return [event async for event in model.stream(messages, options)]  # type: ignore[attr-defined]


def split(events: list[LlmEvent]) -> tuple[str, list[ToolCallDelta], StreamEnd]:
    """The text, the call pieces, and the end (which must come once, last)."""
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert not any(isinstance(e, StreamEnd) for e in events[:-1])
    text = "".join(e for e in events if isinstance(e, str))
    return text, [e for e in events if isinstance(e, ToolCallDelta)], end


def the_call(deltas: list[ToolCallDelta]) -> tuple[str, dict[str, object]]:
    assert deltas and {(d.index, d.call_id, d.name) for d in deltas} == {
        (0, deltas[0].call_id, deltas[0].name)
    }
    return deltas[0].name, json.loads("".join(d.arguments for d in deltas))


@pytest.mark.models
async def test_embedded_named_tool_choice_makes_a_valid_call(llm: LlamaLlm) -> None:
    options = GenerationOptions(60, 0.0, [WEATHER, TIMER], "get_weather")
    text, deltas, end = split(await collect(llm, [SYSTEM, QUESTION], options))
    name, arguments = the_call(deltas)
    assert text == "" and name == "get_weather" and deltas[0].call_id.startswith("call_")
    assert isinstance(arguments["city"], str) and arguments["city"]
    assert end.finish_reason == "tool_calls" and end.input_tokens > 50 and end.output_tokens > 3


@pytest.mark.models
async def test_embedded_required_calls_one_of_the_tools(llm: LlamaLlm) -> None:
    request = ChatMessage("user", "Set a timer for five minutes.")
    options = GenerationOptions(60, 0.0, [WEATHER, TIMER], "required")
    _, deltas, end = split(await collect(llm, [SYSTEM, request], options))
    name, arguments = the_call(deltas)
    spec = {"get_weather": WEATHER, "set_timer": TIMER}[name]
    assert argument_problems(arguments, spec.parameters) == []
    assert end.finish_reason == "tool_calls"


@pytest.mark.models
async def test_embedded_none_and_auto_answer_in_text(llm: LlamaLlm) -> None:
    for choice in ("none", "auto"):
        options = GenerationOptions(30, 0.0, [WEATHER, TIMER], choice)
        text, deltas, end = split(await collect(llm, [SYSTEM, QUESTION], options))
        assert text.strip() and not deltas and MARKER not in text
        assert end.finish_reason in ("stop", "length")
    # after a call and its output, the reply is words (whatever a 135M model makes of it)
    options = GenerationOptions(30, 0.0, [WEATHER, TIMER], "auto")
    text, _, end = split(await collect(llm, ANSWERED, options))
    assert text.strip() and end.finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.models
async def test_embedded_reply_cut_at_max_tokens_ends_with_length(llm: LlamaLlm) -> None:
    text, deltas, end = split(await collect(llm, [SYSTEM, QUESTION], GenerationOptions(3, 0.0)))
    assert text and not deltas
    assert (end.finish_reason, end.output_tokens) == ("length", 3)
    # a call cut short is reported as such (incomplete), not as a call
    options = GenerationOptions(4, 0.0, [WEATHER], "required")
    _, _, end = split(await collect(llm, [SYSTEM, QUESTION], options))
    assert end.finish_reason == "length"


@pytest.mark.models
async def test_embedded_refuses_unusable_tools_naming_them(llm: LlamaLlm) -> None:
    broken = ToolSpec("broken", parameters={"properties": {"x": {"$ref": "#/$defs/none"}}})
    with pytest.raises(EngineError, match="tool 'broken'"):
        await collect(llm, [SYSTEM, QUESTION], GenerationOptions(10, 0.0, [broken], "broken"))
    with pytest.raises(EngineError, match="no such tool"):
        await collect(llm, [SYSTEM, QUESTION], GenerationOptions(10, 0.0, [WEATHER], "nope"))
    # and the engine goes on
    text, _, _ = split(await collect(llm, [SYSTEM, QUESTION], GenerationOptions(5, 0.0)))
    assert text


@pytest.mark.models
async def test_embedded_tools_keep_the_judged_prefix(llm: LlamaLlm) -> None:
    """The tools are described after the history: a reply with tools starts with the
    prompt the end-of-turn judge evaluated, up to the caller's words."""
    messages = [SYSTEM, QUESTION]
    _, judged = llm._fit(messages, llm.options.reply_tokens)
    _, with_tools = llm._fit(messages, 60, [tools_message([WEATHER], forced=False)])
    words = llm._tokens(llm._prompt(messages)[: llm._prompt(messages).rfind("?") + 1])
    assert judged[: len(words)] == with_tools[: len(words)] == words


# -- a real OpenAI-compatible server ----------------------------------------------------------


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` with its function-calling chat format."""
    port = _free_port()
    log: Path = tmp_path_factory.mktemp("llama-tools") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(models.smollm2_gguf()),
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1",
             "--n_threads_batch", "1", "--n_ctx", "1024", "--model_alias", "smollm2",
             "--chat_format", "chatml-function-calling"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_listening(proc, port, log, timeout=120.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.models
async def test_remote_named_tool_choice_makes_a_valid_call(tool_server: str) -> None:
    llm = OpenAiCompatibleLlm(RemoteLlmOptions(base_url=tool_server, model="smollm2", n_ctx=1024))
    try:
        options = GenerationOptions(60, 0.0, [WEATHER, TIMER], "get_weather")
        text, deltas, end = split(await collect(llm, [SYSTEM, QUESTION], options))
        name, arguments = the_call(deltas)
        assert name == "get_weather" and deltas[0].call_id  # the server's id
        assert argument_problems(arguments, WEATHER.parameters) == []
        assert end.finish_reason == "tool_calls" and end.input_tokens > 0
        # the call and its output in the history: a text answer
        options = GenerationOptions(30, 0.0, [WEATHER, TIMER], "none")
        text, deltas, end = split(await collect(llm, ANSWERED, options))
        assert text.strip() and not deltas and end.finish_reason in ("stop", "length")
    finally:
        await llm.aclose()
