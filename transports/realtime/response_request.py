"""``response.create``'s ``response`` object → :class:`pipeline.settings.ResponseOptions`.

Every field of OpenAI's ``RealtimeResponseCreateParams`` either does what OpenAI documents for
this one response or is refused by name: ``instructions``, ``tools``, ``tool_choice``,
``max_output_tokens``, ``output_modalities``, ``audio.output.voice``, ``conversation``
(``auto`` or ``none``: out of band), ``input`` (the context instead of the conversation; items or
``item_reference``\\ s), ``metadata`` (echoed), ``parallel_tool_calls`` ``true`` (a reply makes
every call the model emits; ``false`` is refused). Refused: ``prompt``, ``reasoning``, an output
format other than the session's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipeline.context import Item
from pipeline.errors import ProtocolError
from pipeline.settings import ResponseOptions

from .config import TEMPERATURE, RealtimeConfig, parse_max_tokens, parse_modalities, parse_voice
from .formats import parse_format
from .tools import check_choice, parse_tool_choice, parse_tools
from .validate import field, number, short_repr

_KEYS = {
    "audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
    "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
    # beta names
    "modalities", "voice", "output_audio_format", "temperature", "max_response_output_tokens",
}  # fmt: skip
MAX_METADATA = 16
MAX_INPUT_ITEMS = 1000


def parse_response(
    obj: dict[str, Any], config: RealtimeConfig, item_for: Callable[[Any, str], Item]
) -> ResponseOptions:
    """Raises :class:`ProtocolError` naming the field at fault; nothing starts then."""
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ProtocolError(
            f"unknown parameter 'response.{unknown[0]}'",
            code="unknown_parameter",
            param=f"response.{unknown[0]}",
        )
    for key in ("prompt", "reasoning"):
        if obj.get(key) is not None:
            raise ProtocolError(
                f"response.{key} is not supported here",
                code="unsupported_parameter",
                param=f"response.{key}",
            )
    if field(obj, "parallel_tool_calls", bool, path="response", default=True) is not True:
        raise ProtocolError(
            "response.parallel_tool_calls false is not supported here (a reply makes every call"
            " the model emits); leave it true",
            code="unsupported_value",
            param="response.parallel_tool_calls",
        )
    options = ResponseOptions(
        instructions=field(obj, "instructions", str, path="response", default=None),
        metadata=_metadata(obj.get("metadata")),
        out_of_band=_out_of_band(obj.get("conversation", "auto")),
    )
    options.generation = _generation(obj, config)
    for key in ("output_modalities", "modalities"):
        value = field(obj, key, list, path="response", default=None)
        if value is not None:
            options.text_only = parse_modalities(value, f"response.{key}")
    _audio(obj, config, options)
    raw_input = field(obj, "input", list, path="response", default=None)
    if raw_input is not None:
        if len(raw_input) > MAX_INPUT_ITEMS:
            raise ProtocolError(
                f"response.input has more than {MAX_INPUT_ITEMS} items",
                code="invalid_value",
                param="response.input",
            )
        options.input = [item_for(raw, f"response.input[{i}]") for i, raw in enumerate(raw_input)]
    return options


def _generation(obj: dict[str, Any], config: RealtimeConfig) -> Any:
    generation = replace(config.settings.generation)
    if "tools" in obj:
        generation.tools = parse_tools(obj["tools"], "response.tools")
    if "tool_choice" in obj:
        generation.tool_choice = parse_tool_choice(obj["tool_choice"], "response.tool_choice")
    check_choice(
        generation.tools, config.server_tools, generation.tool_choice, "response.tool_choice"
    )
    for key in ("max_output_tokens", "max_response_output_tokens"):
        if key in obj:
            try:
                generation = parse_max_tokens(obj[key], generation, config.max_tokens_cap, key)
            except ProtocolError as exc:
                exc.param = f"response.{key}"
                raise
    temperature = number(obj, "temperature", float, *TEMPERATURE, path="response", default=None)
    if temperature is not None:
        generation.temperature = temperature
    return generation


def _audio(obj: dict[str, Any], config: RealtimeConfig, options: ResponseOptions) -> None:
    audio = field(obj, "audio", dict, path="response", default={})
    output = field(audio, "output", dict, path="response.audio", default={})
    for container, param in ((output, "response.audio.output"), (obj, "response")):
        voice = container.get("voice")
        if voice is not None:
            options.client_voice = parse_voice(voice, f"{param}.voice", config.voices)
            options.voice = config.voices[options.client_voice]
    for value, param in (
        (output.get("format"), "response.audio.output.format"),
        (obj.get("output_audio_format"), "response.output_audio_format"),
    ):
        if value is not None and parse_format(value, param) != config.output_format:
            raise ProtocolError(
                f"{param}: a response's audio format must be the session's"
                f" ({config.output_format.type}); change it with session.update",
                code="unsupported_value",
                param=param,
            )


def _out_of_band(value: Any) -> bool:
    if value in ("auto", None):
        return False
    if value == "none":
        return True
    raise ProtocolError(
        f"response.conversation must be 'auto' or 'none', not {short_repr(value)}",
        code="invalid_value",
        param="response.conversation",
    )


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's rule: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise ProtocolError(
            f"response.metadata must be an object of at most {MAX_METADATA} strings",
            code="invalid_value",
            param="response.metadata",
        )
    for key, item in value.items():
        if len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise ProtocolError(
                f"response.metadata[{short_repr(key)}]: keys up to 64 characters, string values"
                " up to 512",
                code="invalid_value",
                param="response.metadata",
            )
    return dict(value)
