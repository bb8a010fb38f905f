"""Server-side tools: schemas from signatures, the runner's failures as ToolError, timeouts on
virtual time, cancellation, loading modules by path, and the bundled examples."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from pipeline.clock import VirtualClock, settle
from pipeline.engines.tools import argument_problems
from pipeline.errors import ConfigError, ToolError, VoiceError
from pipeline.tools import Tool, ToolContext, ToolRegistry, tool
from pipeline.tools import examples as ex
from voice import cli
from voice.config import load
from voice.tools import load_tools

CONTEXT = ToolContext("s-test")


@tool
async def forecast(
    city: str,
    days: int = 1,
    unit: Literal["celsius", "fahrenheit"] = "celsius",
    hourly: bool = False,
    tags: list[str] | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Tell the weather forecast for a city.

    More text that is not the description.
    """
    return {"city": city, "days": days, "unit": unit, "hourly": hourly, "tags": tags}


def _registry(*tools: Tool, default_timeout_s: float = 10.0) -> ToolRegistry:
    return ToolRegistry(tools, default_timeout_s=default_timeout_s)


async def _error(registry: ToolRegistry, name: str, arguments: str, **kw: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await registry.run(name, arguments, CONTEXT, **kw)
    assert isinstance(caught.value, VoiceError)
    assert json.loads(caught.value.output()) == {"error": str(caught.value)}
    return str(caught.value)


# Declaration


def test_the_schema_comes_from_the_signature() -> None:
    assert forecast.name == "forecast"
    assert forecast.spec.description == "Tell the weather forecast for a city."
    assert forecast.on_barge_in == "cancel" and forecast.timeout_s is None
    assert forecast.spec.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "default": 1},
            "unit": {"enum": ["celsius", "fahrenheit"], "type": "string", "default": "celsius"},
            "hourly": {"type": "boolean", "default": False},
            "tags": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
            "scale": {"type": "number", "default": 1.0},
        },
        "required": ["city"],
        "additionalProperties": False,
    }


def test_options_and_the_context_parameter() -> None:
    @tool(name="book", description="Book a table.", on_barge_in="finish", timeout_s=3)
    async def f(ctx: ToolContext, when: Annotated[str, "ISO date"], extras: dict[str, int]) -> str:
        return when

    assert f.spec.name == "book" and f.spec.description == "Book a table."
    assert f.on_barge_in == "finish" and f.timeout_s == 3 and f.context == "ctx"
    assert f.spec.parameters["properties"] == {
        "when": {"type": "string", "description": "ISO date"},
        "extras": {"type": "object", "additionalProperties": {"type": "integer"}},
    }
    assert f.spec.parameters["required"] == ["when", "extras"]


def test_an_explicit_schema_is_taken_as_given() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @tool(parameters=schema)
    async def search(**arguments: Any) -> str:
        return str(arguments)

    assert search.spec.parameters is schema and search.spec.description == ""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(x: int) -> str: ...", "must be an async def"),
        ("async def f(x) -> str: ...", "'x' needs a type hint"),
        ("async def f(*args: int) -> str: ...", "must be a plain or keyword one"),
        ("async def f(**kw: int) -> str: ...", "must be a plain or keyword one"),
        ("async def f(x: set[int]) -> str: ...", "has no JSON Schema"),
        ("async def f(x: dict[int, str]) -> str: ...", "has no JSON Schema"),
        ("async def f(x: 'Nope') -> str: ...", "cannot resolve its type hints"),
    ],
)
def test_a_function_that_cannot_be_a_tool_is_refused_by_name(source: str, message: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(TypeError, match=message):
        tool(namespace["f"])


def test_bad_options_are_refused() -> None:
    async def f() -> str:
        return ""

    with pytest.raises(ValueError, match="on_barge_in"):
        tool(on_barge_in="later")(f)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="timeout_s"):
        tool(timeout_s=0)(f)
    with pytest.raises(ValueError, match="tool name"):
        tool(name="no spaces")(f)
    with pytest.raises(ValueError, match="unknown type"):
        tool(parameters={"type": "object", "properties": {"x": {"type": "date"}}})(f)


def test_derived_schemas_make_llama_grammars() -> None:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from pipeline.engines._llama_tools import call_schema

    specs = [forecast.spec, ex.get_current_time.spec, ex.end_call.spec]
    assert "root" in json_schema_to_gbnf(json.dumps(call_schema(specs)))


# Running


async def test_a_call_runs_with_its_arguments_and_defaults() -> None:
    registry = _registry(forecast)
    out = await registry.run("forecast", '{"city": "Oslo", "tags": ["rain"]}', CONTEXT)
    assert json.loads(out) == {
        "city": "Oslo",
        "days": 1,
        "unit": "celsius",
        "hourly": False,
        "tags": ["rain"],
    }
    assert registry.specs() == [forecast.spec] and registry.get("forecast") is forecast
    assert "forecast" in registry and len(registry) == 1


async def test_a_str_result_is_the_output_as_is() -> None:
    @tool
    async def echo(text: str) -> str:
        return text

    assert await _registry(echo).run("echo", '{"text": "{not json"}', CONTEXT) == "{not json"


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("nope", "{}", "there is no tool named 'nope' (tools: forecast)"),
        ("forecast", "{city", "the arguments are not JSON"),
        ("forecast", "[1]", "the arguments must be a JSON object"),
        ("forecast", "{}", "arguments.city is required"),
        ("forecast", '{"city": "Oslo", "days": "two"}', "arguments.days must be of type integer"),
        ("forecast", '{"city": "Oslo", "days": 1.5}', "arguments.days must be of type integer"),
        ("forecast", '{"city": "Oslo", "unit": "kelvin"}', "arguments.unit must be one of"),
        ("forecast", '{"city": "Oslo", "when": 1}', "arguments.when is not a known property"),
        ("forecast", '{"city": "Oslo", "tags": [1]}', "matches none of its anyOf"),
    ],
)
async def test_bad_calls_are_tool_errors_the_model_can_read(
    name: str, arguments: str, message: str
) -> None:
    assert message in await _error(_registry(forecast), name, arguments)


async def test_empty_arguments_mean_none() -> None:
    assert json.loads(await _registry(ex.get_current_time).run("get_current_time", "", CONTEXT))


async def test_an_exception_in_the_tool_is_a_tool_error() -> None:
    @tool
    async def broken(x: int) -> str:
        raise RuntimeError(f"database down ({x})")

    @tool
    async def unencodable() -> object:
        return object()

    @tool
    async def own_timeout() -> str:
        raise TimeoutError("upstream")

    registry = _registry(broken, unencodable, own_timeout)
    message = await _error(registry, "broken", '{"x": 3}')
    assert message == "broken failed: RuntimeError: database down (3)"
    assert "not JSON" in await _error(registry, "unencodable", "{}")
    assert (
        await _error(registry, "own_timeout", "{}") == "own_timeout failed: TimeoutError: upstream"
    )


async def test_arguments_an_explicit_schema_lets_through_but_the_function_refuses() -> None:
    @tool(parameters={"type": "object"})
    async def strict(a: int) -> int:
        return a

    registry = _registry(strict)
    assert (
        await _error(registry, "strict", '{"b": 1}') == "strict: missing a required argument: 'a'"
    )
    assert "unexpected keyword argument 'b'" in await _error(registry, "strict", '{"a": 1, "b": 1}')


async def test_a_tool_that_hangs_times_out_on_the_session_clock() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def hang() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return "never"

    @tool(timeout_s=0.5)
    async def quick_hang() -> str:
        await asyncio.Event().wait()
        return "never"

    clock = VirtualClock()
    registry = _registry(hang, quick_hang, default_timeout_s=2.0)
    call = asyncio.create_task(_error(registry, "hang", "{}", clock=clock))
    await clock.advance(1.9)
    assert started.is_set() and not call.done()
    await clock.advance(0.2)
    assert await call == "hang did not finish within 2 s"
    assert cancelled.is_set()
    call = asyncio.create_task(_error(registry, "quick_hang", "{}", clock=clock))
    await clock.advance(0.5)
    assert await call == "quick_hang did not finish within 0.5 s"
    assert registry.timeout_for("hang") == 2.0 and registry.timeout_for("quick_hang") == 0.5


async def test_the_real_clock_times_out_too() -> None:
    @tool(timeout_s=0.01)
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    assert "did not finish within 0.01 s" in await _error(_registry(slow), "slow", "{}")


async def test_cancelling_a_call_cancels_the_tool() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def wait() -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    clock = VirtualClock()
    call = asyncio.create_task(_registry(wait).run("wait", "{}", CONTEXT, clock=clock))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert cancelled.is_set()
    await clock.advance(60)  # the timeout's watchdog is gone: nothing fires later
    await settle()


def test_the_barge_in_policy_is_per_tool() -> None:
    registry = _registry(forecast, ex.end_call)
    assert registry.cancel_on_barge_in("forecast") is True
    assert registry.cancel_on_barge_in("end_call") is False
    assert registry.cancel_on_barge_in("unknown") is True


def test_a_name_declared_twice_is_a_config_error() -> None:
    @tool(name="forecast")
    async def other(city: str) -> str:
        return city

    with pytest.raises(ConfigError, match=r"'forecast' is declared twice: by .*forecast and by"):
        _registry(forecast, other)
    with pytest.raises(ConfigError, match="positive"):
        _registry(default_timeout_s=0)


# The examples


async def test_get_current_time_in_a_known_zone() -> None:
    out = json.loads(
        await _registry(ex.get_current_time).run(
            "get_current_time", '{"timezone": "Asia/Kolkata"}', CONTEXT
        )
    )
    assert out["timezone"] == "Asia/Kolkata" and out["utc_offset"] == "+05:30"
    assert re.fullmatch(r"\d{2}:\d{2}", out["time"])
    local = datetime.now(UTC) + timedelta(hours=5, minutes=30)
    assert out["date"] in {(local + timedelta(minutes=d)).strftime("%Y-%m-%d") for d in (-1, 0)}
    assert out["weekday"] == datetime.strptime(out["date"], "%Y-%m-%d").strftime("%A")
    utc = await ex.get_current_time()
    assert utc["utc_offset"] == "+00:00" and utc["timezone"] == "UTC"


async def test_get_current_time_understands_how_people_name_a_zone() -> None:
    registry = _registry(ex.get_current_time)
    said = {
        "america/new york": "America/New_York",
        "New York": "America/New_York",
        "Paris": "Europe/Paris",
        "PST": "America/Los_Angeles",
        " utc ": "UTC",
        "GMT": "UTC",
        "Asia/Tokyo": "Asia/Tokyo",
    }
    for zone, name in said.items():
        out = json.loads(
            await registry.run("get_current_time", json.dumps({"timezone": zone}), CONTEXT)
        )
        assert out["timezone"] == name, zone


async def test_get_current_time_in_an_unknown_zone() -> None:
    registry = _registry(ex.get_current_time)
    for zone in ("Mars/Olympus_Mons", "../../etc/passwd", "", "localtime", "my time zone"):
        message = await _error(registry, "get_current_time", json.dumps({"timezone": zone}))
        assert message.startswith(f"unknown time zone {zone!r}")


async def test_end_call_asks_the_session_to_end_the_call() -> None:
    reasons: list[str] = []
    context = ToolContext("s-1", end_call=reasons.append)
    registry = _registry(ex.end_call)
    out = await registry.run("end_call", '{"reason": "caller said bye"}', context)
    assert reasons == ["caller said bye"] and "end" in out
    assert ex.end_call.spec.parameters["properties"].keys() == {"reason"}
    message = await _error(registry, "end_call", "{}")  # CONTEXT has no way to end a call
    assert message == "this session cannot end the call"


def test_example_schemas_are_valid_for_their_defaults() -> None:
    for item in (ex.get_current_time, ex.end_call):
        assert argument_problems({}, item.spec.parameters) == []


# Loading


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.delitem(sys.modules, name, raising=False)


APP = """
    from pipeline.tools import tool
    from pipeline.tools.examples import get_current_time

    @tool(description="Add two numbers.")
    async def add(a: int, b: int) -> int:
        return a + b

    def helper() -> None: ...
"""


async def test_tools_load_from_module_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _module(tmp_path, monkeypatch, "voice_test_app", APP)
    registry = load_tools(
        " voice_test_app, pipeline.tools.examples ,voice_test_app,", default_timeout_s=3.0
    )
    assert [s.name for s in registry.specs()] == [
        "get_current_time",
        "add",
        "end_call",
        "transfer_call",
        "press_keys",
    ]
    assert await registry.run("add", '{"a": 2, "b": 3}', CONTEXT) == "5"
    assert registry.default_timeout_s == 3.0
    assert len(load_tools("")) == 0


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import no_such_module_here\n", "cannot import 'voice_test_bad': ModuleNotFoundError"),
        ("raise RuntimeError('boom')\n", "cannot import 'voice_test_bad': RuntimeError: boom"),
        (
            "from pipeline.tools import tool\n@tool\nasync def f(x: set[int]) -> str: ...\n",
            "cannot import 'voice_test_bad': TypeError: .*has no JSON Schema",
        ),
        ("x = 1\n", "module 'voice_test_bad' declares no @tool functions"),
        (
            "from pipeline.tools import tool\n@tool\nasync def end_call() -> str: ...\n",
            "tool name 'end_call' is declared twice: by pipeline.tools.examples.end_call and by"
            " voice_test_bad.end_call",
        ),
    ],
)
def test_a_bad_tools_module_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, message: str
) -> None:
    _module(tmp_path, monkeypatch, "voice_test_bad", source)
    with pytest.raises(ConfigError, match=f"^server.tools: {message}"):
        load_tools("pipeline.tools.examples,voice_test_bad")


def test_the_tools_flag_and_keys() -> None:
    args = cli._parser().parse_args(["serve", "--tools", "pipeline.tools.examples,myapp"])
    config = load(env={}, overrides=cli._overrides(args))
    assert config.server.tools == "pipeline.tools.examples,myapp"
    assert load(env={}).server.tools == "" and load(env={}).limits.tool_timeout == 10.0
    assert load(env={"VOICE_LIMITS_TOOL_TIMEOUT": "2.5"}).limits.tool_timeout == 2.5
