"""Function calls for a chat model without tool support, by schema-constrained decoding.

The tools are described in a compact fixed format in a system message; a call is written as
:data:`MARKER` followed by ``{"name": …, "arguments": {…}}``, and that JSON is generated under
a llama.cpp grammar built from the tools' schemas, so every call is valid JSON that names a
listed tool and matches its ``parameters``. Pure text handling (no model) except the grammar
check, which is given the model's vocabulary.

- :func:`template_message`: a chat message as the template sees it (calls written in the
  same format, outputs as ``tool`` messages);
- :func:`tools_message`: the system message describing the tools;
- :class:`GrammarCache`: one grammar per tool set, converted and checked once;
- :class:`MarkerScanner`: free text, held back where it might be the start of the marker;
- :class:`CallParser`: the constrained JSON, streamed as argument pieces.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from ..context import ChatMessage, ToolCall
from .tools import ToolSpec, argument_problems

MARKER = "<tool_call>"
_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


def template_message(message: ChatMessage) -> dict[str, str]:
    """``role`` and ``content`` for the chat template: an assistant's calls are appended to
    its words in the format the model is asked to use."""
    content = message.content
    for call in message.tool_calls:
        content += MARKER + call_text(call.name, call.arguments)
    return {"role": message.role, "content": content}


def call_text(name: str, arguments: str) -> str:
    return '{"name": ' + json.dumps(name) + ', "arguments": ' + (arguments or "{}") + "}"


def tools_message(specs: Sequence[ToolSpec], forced: bool) -> ChatMessage:
    """The system message that lists ``specs`` and says how to call one."""
    lines = ["You can call these functions:"]
    lines += [f"- {_signature(spec)}" for spec in specs]
    how = f'To call one, answer with {MARKER} and {{"name": ..., "arguments": {{...}}}}.'
    lines.append(how if forced else f"{how} Otherwise answer normally.")
    return ChatMessage("system", "\n".join(lines))


def _signature(spec: ToolSpec) -> str:
    params = spec.parameters.get("properties", {})
    required = set(spec.parameters.get("required", []))
    args = ", ".join(
        f"{name}{'' if name in required else '?'}: {_type_name(schema)}"
        for name, schema in params.items()
    )
    described = f": {spec.description}" if spec.description else ""
    return f"{spec.name}({args}){described}"


def _type_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return "|".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    return "|".join(kind) if isinstance(kind, list) else str(kind)


def call_schema(specs: Sequence[ToolSpec]) -> dict[str, Any]:
    """A JSON Schema matching ``{"name": N, "arguments": A}`` for each tool's N and A."""
    alternatives = [
        {
            "type": "object",
            "properties": {"name": {"const": spec.name}, "arguments": spec.parameters},
            "required": ["name", "arguments"],
        }
        for spec in specs
    ]
    return alternatives[0] if len(alternatives) == 1 else {"oneOf": alternatives}


class GrammarCache:
    """The llama.cpp grammar for each tool set, built once (at most ``limit`` sets kept).
    ``parses`` tells whether llama.cpp accepts a GBNF text (with the model's vocabulary)."""

    def __init__(self, parses: Callable[[str], bool], limit: int = 32) -> None:
        self._parses = parses
        self._limit = limit
        self._grammars: OrderedDict[str, Any] = OrderedDict()

    def get(self, specs: Sequence[ToolSpec]) -> Any:
        """The grammar of a call to one of ``specs``; ``ValueError`` naming the tool whose
        schema cannot be turned into a grammar."""
        key = json.dumps([[s.name, s.parameters] for s in specs], sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._build(specs)
            self._grammars[key] = grammar
            while len(self._grammars) > self._limit:
                self._grammars.popitem(last=False)
        self._grammars.move_to_end(key)
        return grammar

    def _build(self, specs: Sequence[ToolSpec]) -> Any:
        from llama_cpp import LlamaGrammar

        for spec in specs:  # one by one, to name the tool that fails
            self._convert(spec.name, call_schema([spec]))
        return LlamaGrammar.from_string(self._convert(None, call_schema(specs)))

    def _convert(self, name: str | None, schema: dict[str, Any]) -> str:
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        which = f"tool {name!r}" if name else "the tools"
        try:
            gbnf = json_schema_to_gbnf(json.dumps(schema))
        except Exception as exc:  # the converter raises bare exceptions and assertions
            raise ValueError(f"{which}: llama.cpp cannot make a grammar of it: {exc!r}") from None
        if not self._parses(gbnf):
            raise ValueError(f"{which}: llama.cpp rejected the grammar made from its schema")
        return gbnf


class MarkerScanner:
    """Free text in, text safe to speak out; stops at :data:`MARKER`."""

    def __init__(self) -> None:
        self.text = ""
        """Everything fed, up to the marker."""
        self.found = False
        self._sent = 0

    def feed(self, delta: str) -> str:
        """The part of the text so far that is certainly not the marker, not sent before."""
        self.text += delta
        at = self.text.find(MARKER)
        if at >= 0:
            self.found, self.text = True, self.text[:at]
            return self._send(at)
        return self._send(len(self.text) - _partial_marker(self.text))

    def flush(self) -> str:
        return self._send(len(self.text))

    def _send(self, upto: int) -> str:
        piece = self.text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return piece


def _partial_marker(text: str) -> int:
    """The length of the longest end of ``text`` that begins the marker."""
    for length in range(min(len(MARKER) - 1, len(text)), 0, -1):
        if MARKER.startswith(text[-length:]):
            return length
    return 0


class CallParser:
    """The grammar-constrained JSON of one call in, its argument pieces out.

    The grammar fixes the shape ``{"name": "N", "arguments": A}`` (with optional single
    spaces), so once the head is complete the rest is ``A`` and a closing brace: pieces are
    sent holding back trailing spaces and one ``}``, which may be that closing brace.
    """

    def __init__(self, specs: Sequence[ToolSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self.text = ""
        self.name: str | None = None
        self.call_id = f"call_{secrets.token_hex(12)}"
        self._start = 0
        self._sent = 0

    def feed(self, delta: str) -> str:
        """The next piece of the arguments (may be empty)."""
        self.text += delta
        if self.name is None:
            head = _HEAD.match(self.text)
            if head is None:
                return ""
            self.name = json.loads(f'"{head.group(1)}"')
            self._start = self._sent = head.end()
        upto = self._arguments_end()
        piece = self.text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return piece

    def _arguments_end(self) -> int:
        tail = self.text[self._start :].rstrip()
        if tail.endswith("}"):
            tail = tail[:-1].rstrip()
        return self._start + len(tail)

    def finish(self) -> ToolCall:
        """The complete call; ``ValueError`` if it is not valid for its tool's schema."""
        try:
            call = json.loads(self.text)
        except ValueError as exc:
            raise ValueError(f"the call is not JSON ({exc}): {self.text[:200]!r}") from None
        if not isinstance(call, dict) or call.get("name") not in self._specs:
            raise ValueError(f"the call names no listed tool: {self.text[:200]!r}")
        spec = self._specs[call["name"]]
        problems = argument_problems(call.get("arguments"), spec.parameters)
        if problems:
            raise ValueError(f"call to {spec.name!r}: {'; '.join(problems)}")
        if self.name is None:  # (the grammar writes the head as _HEAD expects)
            return ToolCall(self.call_id, spec.name, json.dumps(call.get("arguments")))
        return ToolCall(self.call_id, spec.name, self.text[self._start : self._arguments_end()])
