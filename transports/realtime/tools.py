"""``tools`` and ``tool_choice`` as a Realtime client sends them (``session.update``,
``response.create``), checked before a model ever sees them."""

from __future__ import annotations

from typing import Any

from pipeline.engines.tools import TOOL_CHOICES, ToolSpec, check_tool, check_tools
from pipeline.errors import ProtocolError

from .validate import field


def parse_tools(value: Any, param: str) -> list[ToolSpec]:
    """Function tools (``{"type": "function", "name", "description", "parameters"}``); MCP
    tools are refused by name, as is a schema the server cannot use."""
    if not isinstance(value, list):
        raise ProtocolError(f"{param} must be a list", code="invalid_type", param=param)
    specs = []
    for i, raw in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(raw, dict):
            raise ProtocolError(f"{where} must be an object", code="invalid_type", param=where)
        kind = field(raw, "type", str, path=where, default="function")
        if kind != "function":
            raise ProtocolError(
                f"{where}: tools of type {kind!r} are not supported here: use 'function'",
                code="unsupported_value",
                param=f"{where}.type",
            )
        spec = ToolSpec(
            field(raw, "name", str, path=where),
            field(raw, "description", str, path=where, default=""),
            field(raw, "parameters", dict, path=where, default={"type": "object"}),
        )
        try:
            check_tool(spec)
        except ValueError as exc:
            raise ProtocolError(str(exc), code="invalid_tool", param=where) from None
        specs.append(spec)
    try:
        check_tools(specs)
    except ValueError as exc:
        raise ProtocolError(str(exc), code="invalid_tool", param=param) from None
    return specs


def parse_tool_choice(value: Any, param: str) -> str:
    """``auto``, ``none``, ``required``, or the name of one function."""
    if isinstance(value, str) and value in TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return field(value, "name", str, path=param)
    if isinstance(value, dict) and value.get("type") == "mcp":
        raise ProtocolError(
            f"{param}: MCP tools are not supported here: choose a function",
            code="unsupported_value",
            param=f"{param}.type",
        )
    raise ProtocolError(
        f"{param} must be 'auto', 'none', 'required' or {{'type': 'function', 'name': ...}}",
        code="invalid_value",
        param=param,
    )


def check_choice(tools: list[ToolSpec], server_tools: list[str], choice: str, param: str) -> None:
    """A named choice must name a declared function or one of the server's own tools, and the
    client's tools may not take a server tool's name."""
    clash = sorted({t.name for t in tools} & set(server_tools))
    if clash:
        raise ProtocolError(
            f"tool {clash[0]!r} is one of the server's own tools; choose another name",
            code="invalid_tool",
            param=param.replace("tool_choice", "tools"),
        )
    if choice not in TOOL_CHOICES and choice not in {t.name for t in tools} | set(server_tools):
        raise ProtocolError(
            f"{param} names {choice!r}, which is not a declared tool",
            code="invalid_value",
            param=param,
        )
