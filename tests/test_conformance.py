"""Every field an OpenAI Realtime client can send does what OpenAI documents, or is refused.

The fields are walked from the ``openai`` SDK's own ``TypedDict``\\ s (the client events and
everything they carry), so a field a new SDK adds fails :func:`test_every_sdk_field_is_classified`
until ``TABLE`` says what this server does with it. Each row's probe sends a realistic value
through a :class:`RealtimeConnection` and asserts the outcome:

- ``implemented``: accepted, and its effect is visible (the session's settings, the
  ``session.updated`` it answers, the item or the response options it makes);
- ``refused``: an ``error`` whose ``param`` names the field and whose code is specific;
- ``accepted``: a no-op that does what OpenAI documents for it (the comment says why).

A field that exists only inside a refused variant (an MCP tool, a stored prompt, a tracing or
noise-reduction object …) is refused with it: ``VARIANTS`` holds one probe per variant, and each
such field is sent inside it.
"""

from __future__ import annotations

import base64
import json
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import numpy as np
import pytest
from openai.types.realtime import realtime_client_event_param
from openai.types.realtime.response_create_event_with_references_param import (
    ResponseCreateEventWithReferencesParam,
)
from typing_extensions import is_typeddict

from pipeline import messages as m
from pipeline.context import Item
from pipeline.session import Session, SessionSettings
from pipeline.settings import ResponseOptions
from pipeline.turns import TurnSettings
from transports.realtime.config import RealtimeConfig
from transports.realtime.connection import RealtimeConnection
from transports.realtime.formats import PCM, PCMA, PCMU
from transports.realtime.input_config import Transcription

from .fakes import fake_engines, silence
from .harness import Harness
from .realtime_schema import validate_server_event

Event = dict[str, Any]
REFUSAL_CODES = {"unsupported_parameter", "unsupported_value", "invalid_value", "unknown_parameter"}

# ---------------------------------------------------------------- the SDK's fields

Chain = tuple[tuple[str, str], ...]
"""The ``TypedDict``\\ s a field sits in, outermost first, each with the path it sits at."""


def _unwrap(t: Any) -> Any:
    while get_origin(t) in (typing.Required, typing.NotRequired, typing.Annotated):
        t = get_args(t)[0]
    return t


def _members(t: Any) -> list[Any]:
    t = _unwrap(t)
    if get_origin(t) in (Union, types.UnionType):
        return [a for arg in get_args(t) for a in _members(arg)]
    return [t]


def _is_list(t: Any) -> bool:
    return getattr(get_origin(t), "__name__", "") in ("list", "Iterable", "Sequence")


def _is_container(hint: Any) -> bool:
    """Only objects (or lists of objects) or null: its fields are what a client sets."""
    members = [t for t in _members(hint) if t is not type(None)]
    return all(
        is_typeddict(t) or (_is_list(t) and all(map(is_typeddict, _members(get_args(t)[0]))))
        for t in members
    )


@dataclass(slots=True)
class SdkField:
    chains: set[Chain] = field(default_factory=set)
    sample: Any = None
    container: bool = False


def sdk_fields() -> dict[str, SdkField]:
    """``"<event type>:<path>"`` → where the field sits; ``[]`` marks a list's elements."""
    found: dict[str, SdkField] = {}

    def walk(t: Any, path: str, chain: Chain) -> None:
        for member in _members(t):
            if _is_list(member):
                walk(get_args(member)[0], f"{path}[]", chain)
            elif is_typeddict(member) and (member.__name__, path) not in chain:
                inner = (*chain, (member.__name__, path))
                for name, hint in get_type_hints(member).items():
                    if path.endswith(":") and name in ("type", "event_id"):
                        continue  # the event's own: tested below
                    sub = f"{path}{name}" if path.endswith(":") else f"{path}.{name}"
                    entry = found.setdefault(sub, SdkField())
                    entry.chains.add(inner)
                    entry.sample = _sample(hint)
                    entry.container = _is_container(hint)
                    walk(hint, sub, inner)

    for event in (*get_args(realtime_client_event_param.RealtimeClientEventParam),):
        walk(event, f"{_event_type(event)}:", ())
    walk(ResponseCreateEventWithReferencesParam, "response.create:", ())
    return found


def _event_type(event: Any) -> str:
    return str(get_args(_unwrap(get_type_hints(event)["type"]))[0])


def _sample(hint: Any) -> Any:
    t = next(t for t in _members(hint) if t is not type(None))
    if get_origin(t) is Literal:
        return get_args(t)[0]
    if _is_list(t):
        return []
    samples = {str: "x", bool: True, int: 1, float: 0.5}
    return samples.get(t, {})


# ---------------------------------------------------------------- probes


@dataclass(slots=True)
class Result:
    conn: RealtimeConnection
    out: list[Event]
    """The server events answering the last client event."""
    responses: list[ResponseOptions]
    """What each ``response.create`` asked of the session."""

    @property
    def settings(self) -> SessionSettings:
        return self.conn.config.settings

    @property
    def td(self) -> TurnSettings:
        assert self.settings.turn_detection is not None
        return self.settings.turn_detection

    @property
    def transcription(self) -> Transcription:
        assert self.conn.config.transcription is not None
        return self.conn.config.transcription

    @property
    def described(self) -> Event:
        assert [e["type"] for e in self.out] == ["session.updated"], self.out
        session: Event = self.out[0]["session"]
        return session

    @property
    def item(self) -> Item:
        """The last item created, or the last input item of the last response."""
        if self.responses:
            assert self.responses[-1].input
            return self.responses[-1].input[-1]
        return self.conn.session.conversation.items[-1]


@dataclass(slots=True)
class Implemented:
    events: list[Event]
    check: Callable[[Result], Any]


@dataclass(slots=True)
class Accepted:
    """A no-op that is what OpenAI documents (see the row's comment)."""

    events: list[Event]
    check: Callable[[Result], Any] = lambda r: None


@dataclass(slots=True)
class Refused:
    events: list[Event]
    param: str
    """The ``param`` of the error (the field, or the variant or value that carries it)."""


@dataclass(slots=True)
class Checked:
    """Implemented; its effect needs a running reply, tested in ``where``: here a bad value
    draws an error naming the field, which shows it is read."""

    events: list[Event]
    param: str
    where: str


Probe = Implemented | Accepted | Refused | Checked


def update(**session: Any) -> Event:
    return {"type": "session.update", "session": session}


def audio_in(**fields: Any) -> Event:
    return update(audio={"input": fields})


def audio_out(**fields: Any) -> Event:
    return update(audio={"output": fields})


def vad(**fields: Any) -> Event:
    return audio_in(turn_detection={"type": "server_vad", **fields})


def transcription(**fields: Any) -> Event:
    return audio_in(transcription=fields)


def create(**response: Any) -> Event:
    return {"type": "response.create", "response": response}


def add(item: Event, **fields: Any) -> Event:
    return {"type": "conversation.item.create", "item": item, **fields}


def text(
    role: str = "user", words: str = "hello", kind: str = "input_text", **fields: Any
) -> Event:
    return {"type": "message", "role": role, "content": [{"type": kind, "text": words}], **fields}


def audio_part(**fields: Any) -> Event:
    pcm = np.zeros(2400, dtype="<i2").tobytes()  # 100 ms at 24 kHz
    return {"type": "input_audio", "audio": base64.b64encode(pcm).decode(), **fields}


IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}
TOOL = {
    "type": "function",
    "name": "lookup_order",
    "description": "Look up an order by its number.",
    "parameters": {"type": "object", "properties": {"number": {"type": "string"}}},
}
CALL = {"type": "function_call", "call_id": "call_7", "name": "lookup_order", "arguments": "{}"}
OUTPUT = {"type": "function_call_output", "call_id": "call_7", "output": '{"status": "shipped"}'}
TD = "session.audio.input.turn_detection"
TR = "session.audio.input.transcription"


def _gen(r: Result) -> Any:
    generation = r.responses[-1].generation
    assert generation is not None
    return generation


def _items(where: str) -> dict[str, Probe]:
    """The rows of one conversation item, created (``item``) or given as a response's input
    (``response.input[]``): the same parser reads both."""
    created = where == "item"

    def send(item: Event, *before: Event) -> list[Event]:
        if created:
            return [*before, add(item)]
        return [*before, create(conversation="none", input=[item])]

    param = "item" if created else "response.input[0]"
    audio: Probe = (
        Implemented(send(text(content=[audio_part()])), lambda r: r.item.audio)
        if created  # the audio of a response's input is not transcribed: create the item first
        else Refused(send(text(content=[audio_part()])), f"{param}.content")
    )
    output_before = [add(CALL)] if created else []
    rows: dict[str, Probe] = {
        "call_id": Implemented(send(CALL), lambda r: r.item.call_id == "call_7"),
        "arguments": Implemented(
            send({**CALL, "arguments": '{"number": "42"}'}),
            lambda r: r.item.arguments == '{"number": "42"}',
        ),
        "name": Implemented(send(CALL), lambda r: r.item.name == "lookup_order"),
        "output": Implemented(
            send(OUTPUT, *output_before), lambda r: r.item.text == '{"status": "shipped"}'
        ),
        "id": Implemented(send(text(id="item_mine")), lambda r: r.item.id == "item_mine"),
        "role": Implemented(send(text("system", "Be terse.")), lambda r: r.item.role == "system"),
        "type": Implemented(send(CALL), lambda r: r.item.type == "function_call"),
        "content[].type": Implemented(
            send(text("assistant", "Sure.", "output_text")), lambda r: r.item.text == "Sure."
        ),
        "content[].text": Implemented(
            send(text(words="Hi there")), lambda r: r.item.text == "Hi there"
        ),
        "content[].audio": audio,
        # input_image: this server's model reads no images
        "content[].image_url": Refused(send(text(content=[IMAGE])), f"{param}.content[0].type"),
        "content[].detail": Refused(send(text(content=[IMAGE])), f"{param}.content[0].type"),
        # the server transcribes the audio; that transcript is what its model reads
        "content[].transcript": Refused(
            send(text(content=[audio_part(transcript="hi")])), f"{param}.content[0].transcript"
        ),
        # always "realtime.item" (anything else is refused): clients echo the server's items
        "object": Accepted(send(text(object="realtime.item"))),
        # OpenAI: "has no effect on the conversation"
        "status": Accepted(send(text(status="completed"))),
    }
    prefix = "conversation.item.create:item" if created else "response.create:response.input[]"
    return {f"{prefix}.{key}": probe for key, probe in rows.items()}


def _response_rows() -> dict[str, Probe]:
    rows: dict[str, Probe] = {
        "conversation": Implemented(
            [create(conversation="none")], lambda r: r.responses[-1].out_of_band
        ),
        "instructions": Implemented(
            [create(instructions="Answer in French.")],
            lambda r: r.responses[-1].instructions == "Answer in French.",
        ),
        "max_output_tokens": Implemented(
            [create(max_output_tokens=50)], lambda r: _gen(r).max_tokens == 50
        ),
        "metadata": Implemented(
            [create(metadata={"topic": "orders"})],
            lambda r: r.responses[-1].metadata == {"topic": "orders"},
        ),
        "output_modalities": Implemented(
            [create(output_modalities=["text"])], lambda r: r.responses[-1].text_only is True
        ),
        # true is what happens: a reply makes every call the model emits
        "parallel_tool_calls": Refused(
            [create(parallel_tool_calls=False)], "response.parallel_tool_calls"
        ),
        "tool_choice": Implemented(
            [create(tool_choice="none")], lambda r: _gen(r).tool_choice == "none"
        ),
        "tool_choice.type": Implemented(
            [create(tools=[TOOL], tool_choice={"type": "function", "name": "lookup_order"})],
            lambda r: _gen(r).tool_choice == "lookup_order",
        ),
        "tools[].type": Implemented([create(tools=[TOOL])], lambda r: len(_gen(r).tools) == 1),
        "tools[].name": Implemented(
            [create(tools=[TOOL])], lambda r: _gen(r).tools[0].name == "lookup_order"
        ),
        "tools[].description": Implemented(
            [create(tools=[TOOL])], lambda r: _gen(r).tools[0].description == TOOL["description"]
        ),
        "tools[].parameters": Implemented(
            [create(tools=[TOOL])], lambda r: _gen(r).tools[0].parameters == TOOL["parameters"]
        ),
        "audio.output.voice": Implemented(
            [create(audio={"output": {"voice": "marin"}})],
            lambda r: r.responses[-1].client_voice == "marin",
        ),
        "audio.output.voice.id": Implemented(
            [create(audio={"output": {"voice": {"id": "cedar"}}})],
            lambda r: r.responses[-1].client_voice == "cedar",
        ),
        # a response's format must be the session's (session.update changes it)
        "audio.output.format.type": Refused(
            [create(audio={"output": {"format": {"type": "audio/pcmu"}}})],
            "response.audio.output.format",
        ),
        "audio.output.format.rate": Refused(
            [create(audio={"output": {"format": {"type": "audio/pcm", "rate": 16000}}})],
            "response.audio.output.format",
        ),
    }
    rows["tool_choice.name"] = rows["tool_choice.type"]
    reference = [add(text(id="item_a")), create(input=[{"type": "item_reference", "id": "item_a"}])]
    inputs = _items("response.input[]")
    # with_references: an input may be {"type": "item_reference", "id"}, an existing item
    inputs["response.create:response.input[].type"] = Implemented(
        reference, lambda r: r.item is r.conn.session.conversation.get("item_a")
    )
    return {f"response.create:response.{k}": v for k, v in rows.items()} | inputs


def _session_rows() -> dict[str, Probe]:
    rows: dict[str, Probe] = {
        "instructions": Implemented(
            [update(instructions="Speak like a pirate.")],
            lambda r: (
                r.settings.instructions == r.described["instructions"] == "Speak like a pirate."
            ),
        ),
        "max_output_tokens": Implemented(
            [update(max_output_tokens=200)],
            lambda r: r.settings.generation.max_tokens == r.described["max_output_tokens"] == 200,
        ),
        # any OpenAI realtime model name is served by this server's model, which
        # session.updated names; other names are refused
        "model": Accepted(
            [update(model="gpt-realtime")], lambda r: r.described["model"] == "voice-local"
        ),
        "output_modalities": Implemented(
            [update(output_modalities=["text"])],
            lambda r: r.settings.text_only and r.described["output_modalities"] == ["text"],
        ),
        # true is what happens: a reply makes every call the model emits
        "parallel_tool_calls": Refused(
            [update(parallel_tool_calls=False)], "session.parallel_tool_calls"
        ),
        # logprobs are not available
        "include": Refused(
            [update(include=["item.input_audio_transcription.logprobs"])], "session.include"
        ),
        # "auto" (the default) is accepted: the prompt is always fitted to the context
        "truncation": Refused([update(truncation="disabled")], "session.truncation"),
        # there is no tracing service here
        "tracing": Refused([update(tracing="auto")], "session.tracing"),
        # only "realtime": there are no transcription-only sessions here
        "type": Refused([update(type="transcription")], "session.type"),
        "tool_choice": Implemented(
            [update(tool_choice="required")],
            lambda r: r.settings.generation.tool_choice == r.described["tool_choice"] == "required",
        ),
        "tool_choice.type": Implemented(
            [update(tools=[TOOL], tool_choice={"type": "function", "name": "lookup_order"})],
            lambda r: (
                r.settings.generation.tool_choice == "lookup_order"
                and r.described["tool_choice"] == {"type": "function", "name": "lookup_order"}
            ),
        ),
        "tools[].type": Implemented(
            [update(tools=[TOOL])], lambda r: r.described["tools"] == [TOOL]
        ),
        "tools[].name": Implemented(
            [update(tools=[TOOL])],
            lambda r: r.settings.generation.tools[0].name == "lookup_order",
        ),
        "tools[].description": Implemented(
            [update(tools=[TOOL])],
            lambda r: r.settings.generation.tools[0].description == TOOL["description"],
        ),
        "tools[].parameters": Implemented(
            [update(tools=[TOOL])],
            lambda r: r.settings.generation.tools[0].parameters == TOOL["parameters"],
        ),
        "audio.input.format.type": Implemented(
            [audio_in(format={"type": "audio/pcmu"})],
            lambda r: (
                r.conn.config.input_format == PCMU
                and r.described["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            ),
        ),
        "audio.input.format.rate": Implemented(  # 24000, the one rate of audio/pcm
            [
                audio_in(format={"type": "audio/pcmu"}),
                audio_in(format={"type": "audio/pcm", "rate": 24000}),
            ],
            lambda r: r.conn.config.input_format == PCM,
        ),
        "audio.output.format.type": Implemented(
            [audio_out(format={"type": "audio/pcma"})],
            lambda r: r.conn.config.output_format == PCMA and r.settings.output_rate == 8000,
        ),
        "audio.output.format.rate": Implemented(
            [
                audio_out(format={"type": "audio/pcma"}),
                audio_out(format={"type": "audio/pcm", "rate": 24000}),
            ],
            lambda r: r.conn.config.output_format == PCM and r.settings.output_rate == 24000,
        ),
        "audio.output.speed": Implemented(
            [audio_out(speed=1.25)],
            lambda r: r.settings.speed == r.described["audio"]["output"]["speed"] == 1.25,
        ),
        "audio.output.voice": Implemented(
            [audio_out(voice="marin")],
            lambda r: (
                r.described["audio"]["output"]["voice"] == "marin"
                and r.settings.voice == r.conn.config.voices["marin"]
            ),
        ),
        "audio.output.voice.id": Implemented(
            [audio_out(voice={"id": "cedar"})],
            lambda r: r.described["audio"]["output"]["voice"] == "cedar",
        ),
        "audio.input.turn_detection.type": Implemented(
            [audio_in(turn_detection={"type": "semantic_vad"})],
            lambda r: (
                r.td.eagerness == "auto"
                and r.described["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
            ),
        ),
        "audio.input.turn_detection.eagerness": Implemented(
            [audio_in(turn_detection={"type": "semantic_vad", "eagerness": "high"})],
            lambda r: r.td.eagerness == "high",
        ),
        "audio.input.turn_detection.threshold": Implemented(
            [vad(threshold=0.7)], lambda r: r.td.threshold == 0.7
        ),
        "audio.input.turn_detection.prefix_padding_ms": Implemented(
            [vad(prefix_padding_ms=500)],
            lambda r: r.td.prefix_padding_ms == 500,
        ),
        "audio.input.turn_detection.silence_duration_ms": Implemented(
            [vad(silence_duration_ms=800)],
            lambda r: r.td.silence_duration_ms == 800,
        ),
        "audio.input.turn_detection.idle_timeout_ms": Implemented(
            [vad(idle_timeout_ms=6000)],
            lambda r: (
                r.td.idle_timeout_ms == 6000
                and r.described["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 6000
            ),
        ),
        "audio.input.turn_detection.create_response": Implemented(
            [vad(create_response=False)], lambda r: r.settings.create_response is False
        ),
        "audio.input.turn_detection.interrupt_response": Implemented(
            [vad(interrupt_response=False)], lambda r: r.settings.interrupt_response is False
        ),
        "audio.input.transcription.model": Implemented(
            [transcription(model="gpt-4o-transcribe")],
            lambda r: (
                r.transcription.model == "gpt-4o-transcribe"
                and r.described["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
            ),
        ),
        "audio.input.transcription.language": Implemented(
            [transcription(language="en")],
            lambda r: r.transcription.language == "en",
        ),
        # the recognizer takes no prompt, keywords or latency setting per session
        "audio.input.transcription.prompt": Refused(
            [transcription(prompt="Names: Acme")], f"{TR}.prompt"
        ),
        "audio.input.transcription.keywords": Refused(
            [transcription(keywords=["Acme"])], f"{TR}.keywords"
        ),
        "audio.input.transcription.delay": Refused([transcription(delay="low")], f"{TR}.delay"),
        "audio.input.transcription.languages": Refused(
            [transcription(languages=["en", "fr"])], f"{TR}.languages"
        ),
    }
    rows["tool_choice.name"] = rows["tool_choice.type"]
    return {f"session.update:session.{k}": v for k, v in rows.items()}


def _event_rows() -> dict[str, Probe]:
    return {
        "conversation.item.create:previous_item_id": Implemented(
            [add(text(id="a")), add(text(id="b")), add(text(id="c"), previous_item_id="a")],
            lambda r: [i.id for i in r.conn.session.conversation.items] == ["a", "c", "b"],
        ),
        "conversation.item.delete:item_id": Implemented(
            [add(text(id="a")), {"type": "conversation.item.delete", "item_id": "a"}],
            lambda r: r.conn.session.conversation.get("a") is None,
        ),
        "conversation.item.retrieve:item_id": Implemented(
            [add(text(id="a")), {"type": "conversation.item.retrieve", "item_id": "a"}],
            lambda r: r.out[0]["item"]["id"] == "a",
        ),
        "input_audio_buffer.append:audio": Checked(
            [{"type": "input_audio_buffer.append", "audio": "not base64!"}],
            "audio",
            "test_realtime_protocol",
        ),
        "conversation.item.truncate:item_id": Checked(
            [{"type": "conversation.item.truncate", "item_id": "item_x", "audio_end_ms": 1000}],
            "item_id",
            "test_hostile_client",
        ),
        "conversation.item.truncate:content_index": Checked(
            [
                {
                    "type": "conversation.item.truncate",
                    "item_id": "x",
                    "content_index": 1,
                    "audio_end_ms": 0,
                }
            ],
            "content_index",
            "test_hostile_client",
        ),
        "conversation.item.truncate:audio_end_ms": Checked(
            [{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": -1}],
            "audio_end_ms",
            "test_hostile_client",
        ),
        "response.cancel:response_id": Checked(
            [{"type": "response.cancel", "response_id": "resp_unknown"}],
            "response_id",
            "test_response_cancel_names_the_response (below)",
        ),
    }


TABLE: dict[str, Probe] = {
    **_session_rows(),
    **_response_rows(),
    **_items("item"),
    **_event_rows(),
}
"""Every SDK field (but containers and the fields of refused variants) → its probe."""

VARIANTS: dict[str, tuple[Any, str]] = {
    # MCP: no MCP servers are reached from here (tools, tool choices, items)
    "Mcp": ({"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"}, ".type"),
    "RealtimeResponseCreateMcpToolParam": (
        {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"},
        ".type",
    ),
    "ToolChoiceMcpParam": ({"type": "mcp", "server_label": "docs"}, ".type"),
    "RealtimeMcpApprovalRequestParam": (
        {
            "type": "mcp_approval_request",
            "id": "i",
            "server_label": "d",
            "name": "n",
            "arguments": "{}",
        },
        ".type",
    ),
    "RealtimeMcpApprovalResponseParam": (
        {"type": "mcp_approval_response", "approval_request_id": "a", "approve": True},
        ".type",
    ),
    "RealtimeMcpListToolsParam": (
        {"type": "mcp_list_tools", "server_label": "d", "tools": []},
        ".type",
    ),
    "RealtimeMcpToolCallParam": (
        {"type": "mcp_call", "id": "i", "server_label": "d", "name": "n", "arguments": "{}"},
        ".type",
    ),
    # stored prompt templates are OpenAI's
    "ResponsePromptParam": ({"id": "pmpt_123", "version": "2"}, ""),
    # the model has no reasoning effort
    "RealtimeReasoningParam": ({"effort": "low"}, ""),
    # there is no tracing service here
    "TracingConfiguration": ({"workflow_name": "support"}, ""),
    # there is no noise filter
    "NoiseReduction": ({"type": "near_field"}, ""),
    # the prompt is always fitted to the context ("auto")
    "RealtimeTruncationRetentionRatioParam": (
        {"type": "retention_ratio", "retention_ratio": 0.5},
        "",
    ),
}
"""Objects refused whole: class → (a realistic one, the suffix of the refused param)."""


def _variant(entry: SdkField) -> tuple[str, str] | None:
    """The refused variant every occurrence of the field sits in, and that variant's path."""
    found = set()
    for chain in entry.chains:
        hit = next(((name, path) for name, path in chain if name in VARIANTS), None)
        if hit is None:
            return None
        found.add(hit)
    return sorted(found)[0]


def _variant_probe(path: str, entry: SdkField) -> Refused:
    name, where = _variant(entry)  # type: ignore[misc]
    base, suffix = VARIANTS[name]
    inner = _nest(path.removeprefix(where).lstrip("."), entry.sample)
    obj = _merge(json.loads(json.dumps(base)), inner) if inner else base
    event_type, rest = where.split(":")
    event = {"type": event_type, **_nest(rest, obj)}
    return Refused([event], rest.replace("[]", "[0]") + suffix)


def _nest(path: str, value: Any) -> Any:
    """``"a.b[].c"`` and 1 → ``{"a": {"b": [{"c": 1}]}}``."""
    if not path:
        return value
    head, _, rest = path.partition(".")
    inner = _nest(rest, value)
    if head.endswith("[]"):
        return {head[:-2]: [inner]}
    return {head: inner}


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        for key, value in extra.items():
            base[key] = _merge(base[key], value) if key in base else value
        return base
    if isinstance(base, list) and isinstance(extra, list) and base and extra:
        return [_merge(base[0], extra[0])]
    return extra


def _classified() -> Iterator[tuple[str, Probe]]:
    for path, entry in sorted(sdk_fields().items()):
        if entry.container:
            continue
        if _variant(entry) is not None and path not in TABLE:
            yield path, _variant_probe(path, entry)
        elif path in TABLE:
            yield path, TABLE[path]


# ---------------------------------------------------------------- running them


def connection() -> RealtimeConnection:
    session = Session(fake_engines(["hello"], ["Hi there."]), SessionSettings())
    return RealtimeConnection(
        session, RealtimeConfig("voice-local", session.settings), max_event_bytes=1 << 20
    )


def run(events: list[Event]) -> tuple[Result, list[list[Event]]]:
    conn = connection()
    captured: list[ResponseOptions] = []

    def capture(options: ResponseOptions | None = None) -> str:
        captured.append(options or ResponseOptions())
        return "resp_probe"

    conn.session.create_response = capture  # type: ignore[method-assign]
    answers = []
    for event in events:
        answers.append(conn.receive(json.dumps(event)))
        for server_event in answers[-1]:
            validate_server_event(server_event)
    return Result(conn, answers[-1], captured), answers


def test_every_sdk_field_is_classified() -> None:
    fields = sdk_fields()
    unclassified = [
        path
        for path, entry in fields.items()
        if not entry.container and path not in TABLE and _variant(entry) is None
    ]
    assert not unclassified, f"SDK fields this server does not classify: {sorted(unclassified)}"
    stale = sorted(set(TABLE) - set(fields))
    assert not stale, f"rows for fields the SDK no longer has: {stale}"
    assert len(list(_classified())) > 150  # the walk found the SDK's fields


@pytest.mark.parametrize(
    ("path", "probe"), list(_classified()), ids=lambda v: v if isinstance(v, str) else ""
)
async def test_field(path: str, probe: Probe) -> None:
    result, answers = run(probe.events)
    result.conn.session.close("test over")
    for before in answers[:-1]:
        assert not [e for e in before if e["type"] == "error"], before
    if isinstance(probe, Refused | Checked):
        assert [e["type"] for e in result.out] == ["error"], (path, result.out)
        error = result.out[0]["error"]
        assert error["param"] == probe.param, (path, error)
        if isinstance(probe, Refused):
            assert error["code"] in REFUSAL_CODES, (path, error)
        else:
            assert error["code"] and error["code"] != error["type"], (path, error)
        return
    assert not [e for e in result.out if e["type"] == "error"], (path, result.out)
    outcome = probe.check(result)
    assert outcome is None or outcome, path


def test_each_event_names_its_fields() -> None:
    """A field a client event does not have is refused by name, and every event's
    ``event_id`` comes back in the error it causes."""
    for event in (
        {"type": "input_audio_buffer.commit", "event_id": "evt_1", "audio": "AAAA"},
        {"type": "response.cancel", "event_id": "evt_1", "response": {}},
        {"type": "session.update", "event_id": "evt_1", "session": {}, "voice": "marin"},
    ):
        result, _ = run([event])
        (error_event,) = result.out
        assert error_event["event_id"] != "evt_1"
        error = error_event["error"]
        assert error["code"] == "unknown_parameter", error
        assert error["event_id"] == "evt_1"
        assert error["param"] in event and error["param"] not in ("type", "event_id")


def test_read_only_echoes_of_a_session_are_accepted() -> None:
    """A beta client may send ``session.created``'s session back: its read-only fields
    (never settable at OpenAI either) are accepted and change nothing."""
    echo = {"object": "realtime.session", "id": "sess_1", "expires_at": 0, "client_secret": None}
    result, _ = run([update(**echo)])
    assert result.described == connection().config.describe()


async def test_response_cancel_names_the_response() -> None:
    """``response_id`` cancels that response; an out-of-band one cannot be cancelled here, and
    an id that is not in progress is an error (never the conversation's reply by mistake)."""
    engines = fake_engines(["hi"], ["One two three four five six seven eight."] * 2)
    async with Harness(engines, SessionSettings(turn_detection=None)) as h:
        conn = RealtimeConnection(
            h.session, RealtimeConfig("voice-local", h.session.settings), max_event_bytes=1 << 16
        )
        conn.receive(json.dumps(create(conversation="none")))
        conn.receive(json.dumps(create()))
        while len(h.of(m.ReplyStarted)) < 2:
            await h.clock.advance(0.02)
        for started in h.of(m.ReplyStarted):
            conn.render(started)
        side, main = (e.response_id for e in h.of(m.ReplyStarted))
        if h.of(m.ReplyStarted)[0].info.out_of_band is False:
            side, main = main, side
        (refused,) = conn.receive(json.dumps({"type": "response.cancel", "response_id": side}))
        assert refused["error"]["param"] == "response_id", refused
        assert conn.receive(json.dumps({"type": "response.cancel", "response_id": main})) == []
        await h.feed_until(silence(0.02), m.ReplyDone)
    done = {e.response_id: e.status for e in h.of(m.ReplyDone)}
    assert done[main] == "cancelled"
    assert done.get(side) != "cancelled"
