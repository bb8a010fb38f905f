"""Server-side tools: declared with :func:`tool`, run by a :class:`ToolRegistry` (see
:mod:`.registry`); :mod:`.examples` ships a few (``--tools pipeline.tools.examples``)."""

from __future__ import annotations

from ..errors import ToolError
from .registry import DEFAULT_TIMEOUT_S, BargeIn, Tool, ToolContext, ToolRegistry, tool

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BargeIn",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "tool",
]
