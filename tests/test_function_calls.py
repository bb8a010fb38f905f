"""Function calling, text-only and out-of-band responses over the Realtime protocol, with fake
engines on virtual time; every server event is validated against the openai SDK's models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from pipeline import messages as m
from pipeline.engines import StreamEnd, ToolCallDelta
from pipeline.session import SessionSettings
from pipeline.tools import Tool, ToolContext, ToolRegistry, tool
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection

from .fakes import ScriptedLlm, call, fake_engines, silence, tone
from .harness import Harness
from .realtime_schema import validate_server_event

Event = dict[str, Any]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


USER_ASKS = {
    "type": "message",
    "role": "user",
    "content": [{"type": "input_text", "text": "What is the weather in Paris?"}],
}


class Client:
    """A Realtime client in memory: sends events, renders what the session emits, live."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.conn = RealtimeConnection(
            h.session, RealtimeConfig("voice-local", h.session.settings), max_event_bytes=1 << 20
        )
        self.events: list[Event] = []
        self._seen = 0

    def send(self, event: Event) -> list[Event]:
        out = self.conn.receive(json.dumps(event))
        for e in out:
            validate_server_event(e)
        return out

    def pull(self) -> list[Event]:
        new = [e for _, ev in self.h.events[self._seen :] for e in self.conn.render(ev)]
        self._seen = len(self.h.events)
        for e in new:
            validate_server_event(e)
        self.events += new
        return new

    async def until(self, kind: str, count: int = 1, limit_s: float = 30.0) -> None:
        waited = 0.0
        while sum(e["type"] == kind for e in self.events) < count:
            assert waited < limit_s, f"no {kind} within {limit_s} s: {self.types()}"
            await self.h.feed(silence(0.02))
            waited += 0.02
            self.pull()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events if e["type"] != "response.output_audio.delta"]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]


def manual(llm: ScriptedLlm) -> Harness:
    engines = fake_engines(["hi"], ["unused"])
    engines.llm = llm
    return Harness(engines, SessionSettings(turn_detection=None))


async def test_a_spoken_preamble_then_a_function_call_and_the_answer_that_uses_its_output() -> None:
    llm = ScriptedLlm(
        [
            ["Let me ", "check that. ", *call("get_weather", '{"city": "Paris"}'), StreamEnd("tool_calls", 40, 12)],
            "It is sunny in Paris.",
        ]
    )  # fmt: skip
    async with manual(llm) as h:
        client = Client(h)
        client.send({"type": "session.update", "session": {"tools": [WEATHER]}})
        client.send({"type": "conversation.item.create", "item": USER_ASKS})
        client.send({"type": "response.create"})
        await client.until("response.done")
        done = client.of("response.done")[0]["response"]
        assert done["status"] == "completed"
        message, function_call = done["output"]
        assert message["type"] == "message"
        assert message["content"][0]["transcript"] == "Let me check that."
        assert function_call["type"] == "function_call"
        assert (function_call["name"], json.loads(function_call["arguments"])) == (
            "get_weather",
            {"city": "Paris"},
        )
        assert done["usage"] == {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52}
        deltas = client.of("response.function_call_arguments.delta")
        assert "".join(d["delta"] for d in deltas) == '{"city": "Paris"}'
        assert {d["output_index"] for d in deltas} == {1}
        (args_done,) = client.of("response.function_call_arguments.done")
        assert args_done["call_id"] == function_call["call_id"] == "call_1"
        assert [e["item"]["type"] for e in client.of("response.output_item.added")] == [
            "message",
            "function_call",
        ]

        output = {"type": "function_call_output", "call_id": "call_1", "output": "sunny, 21 C"}
        assert client.send({"type": "conversation.item.create", "item": output}) == []
        client.send({"type": "response.create"})
        await client.until("response.done", 2)
    prompt = llm.seen[1]
    assert [(msg.role, msg.content) for msg in prompt[1:]] == [
        ("user", "What is the weather in Paris?"),
        ("assistant", "Let me check that."),
        ("tool", "sunny, 21 C"),
    ]
    assert prompt[2].tool_calls[0].name == "get_weather"
    assert prompt[3].tool_call_id == "call_1"
    assert [t.name for t in llm.options[0].tools] == ["get_weather"]
    assert [e["item"]["type"] for e in client.of("conversation.item.added")] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    answer = client.of("response.done")[1]["response"]["output"][0]
    assert answer["content"][0]["transcript"] == "It is sunny in Paris."


async def test_a_reply_that_is_only_a_call_has_no_message_item() -> None:
    llm = ScriptedLlm([[*call("get_weather", '{"city": "Oslo"}'), StreamEnd("tool_calls", 9, 5)]])
    async with manual(llm) as h:
        client = Client(h)
        client.send({"type": "session.update", "session": {"tools": [WEATHER]}})
        client.send({"type": "response.create", "response": {"tool_choice": "required"}})
        await client.until("response.done")
    (done,) = client.of("response.done")
    assert [item["type"] for item in done["response"]["output"]] == ["function_call"]
    assert [i.type for i in h.session.conversation.items] == ["function_call"]
    assert llm.options[0].tool_choice == "required"


async def test_bad_tools_and_outputs_get_a_clear_error_and_the_session_goes_on() -> None:
    async with manual(ScriptedLlm(["Hi."])) as h:
        client = Client(h)
        cases: list[tuple[Event, str, str]] = [
            (
                {"type": "session.update", "session": {"tools": [{**WEATHER, "parameters": {"type": "nonsense"}}]}},
                "invalid_tool",
                "session.tools[0]",
            ),
            (
                {"type": "session.update", "session": {"tools": [WEATHER, WEATHER]}},
                "invalid_tool",
                "session.tools",
            ),
            (
                {"type": "session.update", "session": {"tool_choice": {"type": "function", "name": "nope"}}},
                "invalid_value",
                "session.tool_choice",
            ),
            (
                {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "call_x", "output": "?"}},
                "unknown_call_id",
                "item.call_id",
            ),
            (
                {"type": "session.update", "session": {"tools": [{"type": "mcp", "server_label": "x"}]}},
                "unsupported_value",
                "session.tools[0].type",
            ),
            ({"type": "response.create", "response": {"reasoning": {"effort": "low"}}}, "unsupported_parameter", "response.reasoning"),
            ({"type": "response.create", "response": {"conversation": "other"}}, "invalid_value", "response.conversation"),
            ({"type": "session.update", "session": {"truncation": "disabled"}}, "unsupported_parameter", "session.truncation"),
        ]  # fmt: skip
        for event, code, param in cases:
            (error,) = client.send(event)
            assert (error["type"], error["error"]["code"], error["error"]["param"]) == (
                "error",
                code,
                param,
            ), event
        assert client.send({"type": "session.update", "session": {"tools": [WEATHER]}})
        client.send({"type": "response.create"})
        await client.until("response.done")
    assert client.of("response.done")[0]["response"]["status"] == "completed"


async def test_a_client_may_create_calls_and_outputs_as_history() -> None:
    llm = ScriptedLlm(["It was sunny."])
    async with manual(llm) as h:
        client = Client(h)
        for item in (
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c9", "name": "get_weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "c9", "output": "sunny"},
        ):  # fmt: skip
            assert client.send({"type": "conversation.item.create", "item": item}) == []
        client.send({"type": "response.create"})
        await client.until("response.done")
    roles = [(msg.role, msg.content, msg.tool_call_id) for msg in llm.seen[0][1:]]
    assert roles == [("user", "Weather?", ""), ("assistant", "", ""), ("tool", "sunny", "c9")]
    added = [e["item"]["type"] for e in client.of("conversation.item.added")]
    assert added[:3] == ["message", "function_call", "function_call_output"]


async def test_text_only_responses_are_written_not_spoken() -> None:
    async with manual(ScriptedLlm(["Just text here."])) as h:
        client = Client(h)
        client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        await client.until("response.done")
    assert h.session.engines.tts.texts == []  # type: ignore[attr-defined]
    assert not client.of("response.output_audio.delta")
    text = "".join(e["delta"] for e in client.of("response.output_text.delta"))
    assert text.strip() == "Just text here."
    (done,) = client.of("response.output_text.done")
    assert done["text"] == "Just text here."
    response = client.of("response.done")[0]["response"]
    assert response["output_modalities"] == ["text"]
    assert response["output"][0]["content"][0] == {"type": "output_text", "text": "Just text here."}


async def test_an_out_of_band_response_runs_beside_the_conversations_and_leaves_no_trace() -> None:
    llm = ScriptedLlm(["One two three four five six seven eight nine ten.", "positive"])
    async with manual(llm) as h:
        client = Client(h)
        client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        before = list(h.session.conversation.items)
        out_of_band = {
            "conversation": "none",
            "output_modalities": ["text"],
            "metadata": {"purpose": "sentiment"},
            "instructions": "Classify the sentiment.",
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "I love it"}]}],
        }  # fmt: skip
        assert client.send({"type": "response.create", "response": out_of_band}) == []
        await client.until("response.done", 1)
        first = client.of("response.done")[0]["response"]
        assert first["metadata"] == {"purpose": "sentiment"}
        assert first["conversation_id"] is None
        assert first["output"][0]["content"][0]["text"] == "positive"
        assert h.session.conversation.items == before
        await client.until("response.done", 2)
    created = [e["response"] for e in client.of("response.created")]
    assert created[1]["metadata"] == {"purpose": "sentiment"}
    assert [(msg.role, msg.content) for msg in llm.seen[1]] == [
        ("system", "Classify the sentiment."),
        ("user", "I love it"),
    ]
    oob_item = first["output"][0]["id"]
    assert all(
        e["item"]["id"] != oob_item for e in client.events if e["type"].startswith("conversation.")
    )


async def test_a_reply_cut_by_the_token_limit_ends_incomplete() -> None:
    async with manual(ScriptedLlm([["Hello there ", StreamEnd("length", 20, 3)]])) as h:
        client = Client(h)
        client.send({"type": "response.create", "response": {"max_output_tokens": 3}})
        await client.until("response.done")
    response = client.of("response.done")[0]["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    assert response["max_output_tokens"] == 3


async def test_barge_in_during_a_call_cancels_it_and_no_call_is_left_to_run() -> None:
    llm = ScriptedLlm(
        [["One two three four five six seven eight. ", *call("get_weather", '{"city": "Paris"}')]]
    )
    engines = fake_engines(["hi"], ["unused"])
    engines.llm = llm
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        client = Client(h)
        client.send({"type": "session.update", "session": {"tools": [WEATHER]}})
        client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        client.send({"type": "response.cancel"})
        await client.until("response.done")
    done = client.of("response.done")[0]["response"]
    assert done["status"] == "cancelled"
    calls = [item for item in done["output"] if item["type"] == "function_call"]
    assert all(item["status"] == "incomplete" for item in calls)
    assert h.of(m.ReplyDone)[0].status == "cancelled"


# ---------------------------------------------------------------- the server's own tools


@tool(description="The time now.")
async def clock_time() -> str:
    return "twelve o'clock"


@tool(description="A slow lookup.", timeout_s=600)
async def slow_lookup(query: str) -> str:
    await asyncio.Event().wait()
    return "never"


@tool(description="Hang up.", on_barge_in="finish")
async def hang_up(context: ToolContext, reason: str = "") -> str:
    context.end_call(reason)
    return "ok"


def served(llm: ScriptedLlm, *tools: Tool) -> Harness:
    engines = fake_engines(["what time is it?"], ["unused"])
    engines.llm = llm
    h = Harness(engines)
    h.session.tools = ToolRegistry(tools)
    return h


async def test_a_server_tool_is_run_by_the_server_and_the_answer_uses_its_output() -> None:
    llm = ScriptedLlm([[*call("clock_time", "{}"), StreamEnd("tool_calls", 5, 2)], "It is noon."])
    async with served(llm, clock_time) as h:
        await h.feed(tone(0.6))
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.02))
    first, second = h.of(m.ReplyDone)
    assert [c.name for c in first.calls] == ["clock_time"]
    outputs = [e.item for e in h.of(m.ItemAdded) if e.item.type == "function_call_output"]
    assert [o.text for o in outputs] == ["twelve o'clock"]
    assert second.item is not None and second.item.text == "It is noon."
    assert llm.seen[1][-1].role == "tool" and llm.seen[1][-1].content == "twelve o'clock"
    assert [t.name for t in llm.options[0].tools] == ["clock_time"]
    types = [i.type for i in h.session.conversation.items]
    assert types == ["message", "function_call", "function_call_output", "message"]


async def test_a_forced_choice_does_not_call_for_ever() -> None:
    llm = ScriptedLlm([[*call("clock_time", "{}")], "It is noon."])
    async with served(llm, clock_time) as h:
        h.session.settings.generation.tool_choice = "clock_time"
        await h.feed(tone(0.6))
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.02))
    assert [o.tool_choice for o in llm.options] == ["clock_time", "auto"]


async def test_barge_in_cancels_a_running_tool_and_its_output_says_so() -> None:
    llm = ScriptedLlm([["Let me look. ", *call("slow_lookup", '{"query": "x"}')], "Sure."])
    async with served(llm, slow_lookup) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        await h.feed(silence(1.0))  # the tool runs (and would for ten minutes)
        assert h.session._tool_runs
        await h.feed(tone(0.6))  # the caller speaks: a barge-in
        await h.feed(silence(0.1))
        assert not h.session._tool_runs
    outputs = [e.item.text for e in h.of(m.ItemAdded) if e.item.type == "function_call_output"]
    assert outputs == ['{"error": "the caller interrupted"}']


async def test_a_tool_can_end_the_call() -> None:
    llm = ScriptedLlm([["Goodbye. ", *call("hang_up", '{"reason": "done"}')]])
    async with served(llm, hang_up) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.SessionClosed)
    (closed,) = h.of(m.SessionClosed)
    assert closed.reason == "the agent ended the call: done"
    assert h.of(m.ReplyDone)[0].item.text == "Goodbye."  # type: ignore[union-attr]


async def test_speed_and_voice_reach_the_synthesizer_and_a_faster_speed_is_shorter() -> None:
    durations = []
    for speed in (1.0, 1.5):
        async with manual(ScriptedLlm(["One two three four five six."])) as h:
            client = Client(h)
            client.send({"type": "session.update", "session": {"audio": {"output": {"speed": speed, "voice": "marin"}}}})  # fmt: skip
            client.send({"type": "response.create"})
            await client.until("response.done")
            (done,) = h.of(m.ReplyDone)
            assert done.item is not None
            durations.append(done.item.audio_ms)
            requests = h.session.engines.tts.requests  # type: ignore[attr-defined]
            assert {(voice, s) for _, voice, s in requests} == {("joe", speed)}
            assert client.of("response.done")[0]["response"]["audio"]["output"]["voice"] == "marin"
    assert durations[1] < 0.75 * durations[0], durations


async def test_a_call_the_token_limit_cuts_off_is_incomplete_and_never_run() -> None:
    """Arguments the model cannot fit in its tokens: the response ends incomplete, the call is
    marked incomplete, and the server does not run its own tool with half its arguments."""
    ran: list[str] = []

    @tool(description="Record a note.")
    async def take_note(text: str) -> str:
        ran.append(text)
        return "noted"

    cut = [ToolCallDelta(0, "call_n", "take_note", '{"text": "a very long no'), StreamEnd("length", 30, 8)]  # fmt: skip
    async with served(ScriptedLlm([cut, "unused"]), take_note) as h:
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        await h.feed(silence(0.5))
        assert h.session.closed_reason is None
    (done,) = h.of(m.ReplyDone)
    assert (done.status, done.reason) == ("incomplete", "max_output_tokens")
    assert [c.status for c in done.calls] == ["incomplete"]
    assert ran == [] and not [e for e in h.of(m.ItemAdded) if e.item.type == "function_call_output"]
