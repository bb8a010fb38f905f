"""Function tools the LLM may call (OpenAI's ``{"type": "function"}`` tools), engine-neutral.

A :class:`ToolSpec` is a function's name, description and JSON Schema ``parameters``.
:func:`check_tool` is what a protocol layer calls on a client's ``tools`` (it raises
``ValueError`` with a message naming the tool); :func:`argument_problems` checks a call's
arguments against the schema (the subset of JSON Schema that llama.cpp's grammar converter
handles: types, properties, required, additionalProperties, enum, const, items, anyOf/oneOf).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_CHOICES = ("auto", "none", "required")
"""The tool_choice keywords; any other value names the one function to call."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "number": (int, float),
    "integer": int,
    "boolean": bool,
    "null": type(None),
}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    """A JSON Schema of type ``object`` for the call's arguments."""


def check_tool(spec: ToolSpec) -> None:
    """Raise ``ValueError`` naming the tool if its name or its ``parameters`` cannot be used:
    not an object schema, an unknown type, a malformed ``properties``/``required``, a
    reference outside the schema, or not JSON."""
    if not _NAME.match(spec.name):
        raise ValueError(f"tool name {spec.name!r} must be 1-64 letters, digits, _ or -")
    params = spec.parameters
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise ValueError(f"tool {spec.name!r}: parameters must be a JSON Schema of type object")
    try:
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tool {spec.name!r}: parameters are not JSON: {exc}") from None
    problem = _schema_problem(params, "parameters")
    if problem:
        raise ValueError(f"tool {spec.name!r}: {problem}")


def check_tools(specs: Sequence[ToolSpec], tool_choice: str = "auto") -> None:
    """:func:`check_tool` for each, no name twice, and ``tool_choice`` one of
    :data:`TOOL_CHOICES` or a listed name."""
    names = [spec.name for spec in specs]
    for spec in specs:
        check_tool(spec)
    if len(set(names)) != len(names):
        raise ValueError(f"tool names must be unique: {names}")
    if tool_choice not in (*TOOL_CHOICES, *names):
        raise ValueError(f"tool_choice {tool_choice!r} is not auto, none, required or a tool")


def chosen(specs: Sequence[ToolSpec], tool_choice: str) -> list[ToolSpec]:
    """The tools a reply may call under ``tool_choice`` (all; none; or the named one)."""
    if tool_choice == "none":
        return []
    if tool_choice in TOOL_CHOICES:
        return list(specs)
    return [spec for spec in specs if spec.name == tool_choice]


def _schema_problem(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"{where} must be a JSON Schema object, not {type(schema).__name__}"
    kind = schema.get("type")
    for name in kind if isinstance(kind, list) else [kind]:
        if name is not None and (not isinstance(name, str) or name not in _TYPES):
            return f"{where}: unknown type {name!r:.60}"
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and ref.startswith("#/")):
        return f"{where}: only local references (#/...) are supported, not {ref!r}"
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return f"{where}.properties must be an object"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return f"{where}.required must be a list of property names"
    if "enum" in schema and not (isinstance(schema["enum"], list) and schema["enum"]):
        return f"{where}.enum must be a non-empty list"
    children = [(f"{where}.properties.{k}", v) for k, v in properties.items()]
    items = schema.get("items")
    if items is not None:
        listed = items if isinstance(items, list) else [items]
        children += [(f"{where}.items", item) for item in listed]
    for key in _SUBSCHEMA_LISTS:
        if key in schema and not isinstance(schema[key], list):
            return f"{where}.{key} must be a list of schemas"
        children += [(f"{where}.{key}[{i}]", sub) for i, sub in enumerate(schema.get(key, []))]
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        children.append((f"{where}.additionalProperties", extra))
    for path, child in children:
        problem = _schema_problem(child, path)
        if problem:
            return problem
    return None


def argument_problems(value: Any, schema: dict[str, Any], where: str = "arguments") -> list[str]:
    """What in ``value`` does not match ``schema`` (empty when it matches)."""
    if "const" in schema and value != schema["const"]:
        return [f"{where} must be {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where} must be one of {schema['enum']!r}"]
    for key in ("anyOf", "oneOf"):
        if key in schema and all(argument_problems(value, s, where) for s in schema[key]):
            return [f"{where} matches none of its {key} schemas"]
    kind = schema.get("type")
    if kind is not None and not any(
        _is(value, k) for k in (kind if isinstance(kind, list) else [kind])
    ):
        return [f"{where} must be of type {kind}"]
    if isinstance(value, dict):
        return _object_problems(value, schema, where)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            p
            for i, v in enumerate(value)
            for p in argument_problems(v, schema["items"], f"{where}[{i}]")
        ]
    return []


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("number", "integer"):
        return False
    return isinstance(value, _TYPES[kind]) if kind in _TYPES else True


def _object_problems(value: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    properties = schema.get("properties", {})
    problems = [f"{where}.{k} is required" for k in schema.get("required", []) if k not in value]
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            problems += argument_problems(item, properties[key], f"{where}.{key}")
        elif extra is False:
            problems.append(f"{where}.{key} is not a known property")
        elif isinstance(extra, dict):
            problems += argument_problems(item, extra, f"{where}.{key}")
    return problems
