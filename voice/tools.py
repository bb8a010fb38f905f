"""Loading the server-side tools named by ``server.tools`` (``voice serve --tools``).

Each comma-separated entry is a Python module path; every :class:`~pipeline.tools.Tool` found
among its attributes (functions decorated with ``@tool``, or tools it imports from elsewhere)
is served. A module that cannot be imported, one without tools, or a tool name declared twice
is a :class:`~pipeline.errors.ConfigError` naming it.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from pipeline.errors import ConfigError
from pipeline.tools import DEFAULT_TIMEOUT_S, Tool, ToolRegistry

log = logging.getLogger("voice.tools")


def load_tools(modules: str, *, default_timeout_s: float = DEFAULT_TIMEOUT_S) -> ToolRegistry:
    """The tools of each module in the comma-separated ``modules`` (empty: no tools)."""
    found: list[Tool] = []
    for path in filter(None, (entry.strip() for entry in modules.split(","))):
        tools = tools_in(_import(path))
        if not tools:
            raise ConfigError(f"server.tools: module {path!r} declares no @tool functions")
        found += [item for item in tools if item not in found]
    try:
        registry = ToolRegistry(found, default_timeout_s=default_timeout_s)
    except ConfigError as exc:
        raise ConfigError(f"server.tools: {exc}") from None
    if registry.specs():
        log.info("server-side tools: %s", ", ".join(s.name for s in registry.specs()))
    return registry


def tools_in(module: ModuleType) -> list[Tool]:
    """The tools among ``module``'s attributes, in the order they were defined."""
    return [value for value in vars(module).values() if isinstance(value, Tool)]


def _import(path: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except Exception as exc:  # an import error, or any exception the module raised (a bad @tool)
        raise ConfigError(
            f"server.tools: cannot import {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
