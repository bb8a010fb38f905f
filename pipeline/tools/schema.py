"""A JSON Schema for a tool's arguments, derived from its Python signature.

Each parameter becomes a property: ``str`` → string, ``int`` → integer, ``float`` → number,
``bool`` → boolean, ``Literal[...]`` → enum, ``list[T]`` → array, ``dict[str, T]`` → object,
``A | B`` → anyOf, ``Any`` → any value; ``Annotated[T, "text"]`` adds a description. A parameter
with a default is not required. The parameter annotated with the context type is left out: the
runner passes it. Anything else is a ``TypeError`` at decoration time, naming the parameter.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

_SIMPLE: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SKIPPED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)


def derive(function: Callable[..., Any], context_type: type) -> tuple[dict[str, Any], str | None]:
    """``function``'s arguments schema (an object, no extra properties) and the name of its
    ``context_type`` parameter, if it has one."""
    where = getattr(function, "__qualname__", repr(function))
    hints = _hints(function, where)
    properties: dict[str, Any] = {}
    required: list[str] = []
    context = None
    for param in inspect.signature(function).parameters.values():
        hint = hints.get(param.name, param.empty)
        if hint is context_type:
            context = param.name
            continue
        if param.kind in _SKIPPED or param.kind is param.VAR_KEYWORD:
            raise TypeError(f"{where}: parameter {param.name!r} must be a plain or keyword one")
        if hint is param.empty:
            raise TypeError(f"{where}: parameter {param.name!r} needs a type hint")
        properties[param.name] = schema_of(hint, f"{where}({param.name})")
        if param.default is param.empty:
            required.append(param.name)
        elif _is_json(param.default) and param.default is not None:
            properties[param.name]["default"] = param.default
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema, context


def context_parameter(function: Callable[..., Any], context_type: type) -> str | None:
    """The name of ``function``'s parameter annotated ``context_type``, if any."""
    hints = _hints(function, getattr(function, "__qualname__", repr(function)))
    return next((name for name, hint in hints.items() if hint is context_type), None)


def schema_of(hint: Any, where: str) -> dict[str, Any]:
    """The JSON Schema of one type hint."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        schema = schema_of(args[0], where)
        text = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**schema, "description": text} if text else schema
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    if hint is Any:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if origin is Literal:
        return _enum(args, where)
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_of(arg, where) for arg in args]}
    if hint is list or origin is list:
        return {"type": "array", **({"items": schema_of(args[0], where)} if args else {})}
    if hint is dict or (origin is dict and args[0] is str):
        extra = schema_of(args[1], where) if args else {}
        return {"type": "object", **({"additionalProperties": extra} if extra else {})}
    raise TypeError(
        f"{where}: type {hint!r} has no JSON Schema here; use str, int, float, bool, Literal,"
        " list, dict[str, ...] or a union of them, or give the tool parameters="
    )


def _enum(values: tuple[Any, ...], where: str) -> dict[str, Any]:
    kinds = {_SIMPLE.get(type(v)) if v is not None else "null" for v in values}
    if None in kinds:
        raise TypeError(f"{where}: Literal values must be str, int, float, bool or None")
    schema: dict[str, Any] = {"enum": list(values)}
    if len(kinds) == 1:
        schema["type"] = kinds.pop()
    return schema


def _hints(function: Callable[..., Any], where: str) -> dict[str, Any]:
    try:
        return get_type_hints(function, include_extras=True)
    except Exception as exc:  # a name only imported under TYPE_CHECKING, a typo
        raise TypeError(f"{where}: cannot resolve its type hints: {exc}") from exc


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
