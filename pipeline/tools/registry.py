"""Server-side tools: Python functions the server runs itself when the LLM calls them.

An application declares a tool with :func:`tool` on an ``async def``; the arguments schema
comes from the signature (:mod:`.schema`) or from ``parameters=``. A :class:`ToolRegistry`
holds the process's tools: the session gives :meth:`ToolRegistry.specs` to the LLM and, for a
call of one of them, awaits :meth:`ToolRegistry.run`, which returns the text of the
``function_call_output`` or raises :class:`~pipeline.errors.ToolError` (whose
:meth:`~pipeline.errors.ToolError.output` is that text for a failure) and nothing else.

A tool runs on the event loop, under a timeout on the session's clock; blocking work belongs
in ``asyncio.to_thread``. On barge-in, :meth:`ToolRegistry.cancel_on_barge_in` says whether the
session cancels the call (``on_barge_in="cancel"``, the default: a lookup the caller no longer
wants) or lets it finish and records its output (``"finish"``: an action with effects).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from ..clock import Clock, MonotonicClock, timeout
from ..engines.tools import ToolSpec, argument_problems, check_tool
from ..errors import ConfigError, ToolError
from .schema import context_parameter, derive

log = logging.getLogger("pipeline.tools")

DEFAULT_TIMEOUT_S = 10.0
"""Seconds a tool may run unless it sets its own ``timeout_s`` (``limits.tool_timeout``)."""

BargeIn = Literal["finish", "cancel"]
ABILITIES = ("send_digits",)
"""What a tool may need of its session (:attr:`Tool.needs`)."""
ToolFunction = Callable[..., Awaitable[Any]]
_REAL_TIME = MonotonicClock()


def _cannot_end_call(reason: str) -> None:
    raise ToolError("this session cannot end the call", tool="end_call")


async def _cannot_transfer(target: str) -> None:
    raise ToolError("this call cannot be transferred (only SIP calls can)", tool="transfer_call")


def _cannot_send_digits(digits: str) -> None:
    raise ToolError("this call has no keypad (only SIP calls do)", tool="press_keys")


def _cannot_switch(engine: str) -> None:
    raise ToolError("this session cannot change its engine", tool="hand_off")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool may know of and do to its session; a tool asks for it with a parameter
    annotated ``ToolContext`` (not part of the schema)."""

    session_id: str
    end_call: Callable[[str], None] = _cannot_end_call
    """Ask the session to end the call, with a reason for the log; the session decides when
    (once the reply in flight has been heard). The default raises :class:`ToolError`."""
    transfer: Callable[[str], Awaitable[None]] = _cannot_transfer
    """Blind-transfer the call to a ``sip:``/``tel:`` URI (a SIP REFER; the call then ends);
    raises :class:`ToolError` where the call cannot be transferred or the peer refuses."""
    switch_engine: Callable[[str], None] = _cannot_switch
    """Hand the conversation to another engine (``cascade``, ``openai-realtime`` …) from the
    next reply on (``pipeline.handoff``); raises :class:`ToolError` for one not offered."""
    send_digits: Callable[[str], None] = _cannot_send_digits
    """Press keypad keys on the line (``0-9 * # A-D``; RFC 4733 events on a SIP call), queued
    to go out at once; raises :class:`ToolError` for keys that do not exist or a call that
    cannot send them. A tool that uses it declares ``needs="send_digits"``."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A declared tool: its spec for the LLM, its function, its barge-in and timeout policy.
    Calling it calls the function, so a decorated function stays usable (and testable)."""

    spec: ToolSpec
    function: ToolFunction = field(repr=False)
    on_barge_in: BargeIn = "cancel"
    timeout_s: float | None = None
    """None: the registry's default."""
    context: str | None = None
    """The name of the parameter that receives the :class:`ToolContext`."""
    needs: str | None = None
    """A session ability the tool cannot work without (``send_digits``): it is offered to the
    model only in sessions that have it (:meth:`ToolRegistry.specs`). None: offered always."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def origin(self) -> str:
        """Where it is defined (``module.function``), for error messages."""
        return f"{self.function.__module__}.{self.function.__qualname__}"

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return self.function(*args, **kwargs)


@overload
def tool(function: ToolFunction, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    on_barge_in: BargeIn = "cancel",
    timeout_s: float | None = None,
    needs: str | None = None,
) -> Callable[[ToolFunction], Tool]: ...


def tool(
    function: ToolFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    on_barge_in: BargeIn = "cancel",
    timeout_s: float | None = None,
    needs: str | None = None,
) -> Tool | Callable[[ToolFunction], Tool]:
    """Declare an ``async def`` as a server-side tool (``@tool`` or ``@tool(...)``).

    ``name`` defaults to the function's, ``description`` to its docstring's first line,
    ``parameters`` to a schema derived from its signature; ``needs`` names the session ability
    without which the tool is not offered (:attr:`Tool.needs`). Raises ``TypeError`` or
    ``ValueError`` for a function or option that cannot be used, naming it.
    """

    def declare(function: ToolFunction) -> Tool:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"tool {function.__qualname__}: must be an async def")
        if on_barge_in not in ("finish", "cancel"):
            raise ValueError(f"tool {function.__qualname__}: on_barge_in must be finish or cancel")
        if timeout_s is not None and not (0 < timeout_s < math.inf):
            raise ValueError(f"tool {function.__qualname__}: timeout_s must be positive, finite")
        if needs is not None and needs not in ABILITIES:
            raise ValueError(f"tool {function.__qualname__}: needs must be one of {ABILITIES}")
        if parameters is None:
            schema, context = derive(function, ToolContext)
        else:
            schema, context = parameters, context_parameter(function, ToolContext)
        doc = (inspect.getdoc(function) or "").strip().split("\n", 1)[0]
        spec = ToolSpec(name or function.__name__, description or doc, schema)
        check_tool(spec)
        return Tool(spec, function, on_barge_in, timeout_s, context, needs)

    return declare if function is None else declare(function)


class ToolRegistry:
    """The tools one server runs, by name. Raises :class:`ConfigError` for a name declared by
    two different tools or a default timeout that is not a positive number of seconds."""

    def __init__(self, tools: Iterable[Tool] = (), *, default_timeout_s: float = DEFAULT_TIMEOUT_S):
        if not 0 < default_timeout_s < math.inf:
            raise ConfigError(f"tool timeout must be positive and finite, not {default_timeout_s}")
        self.default_timeout_s = default_timeout_s
        self._tools: dict[str, Tool] = {}
        for item in tools:
            known = self._tools.setdefault(item.name, item)
            if known is not item:
                raise ConfigError(
                    f"tool name {item.name!r} is declared twice: by {known.origin}"
                    f" and by {item.origin}"
                )

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def specs(self, abilities: Container[str] | None = None) -> list[ToolSpec]:
        """The tools' specs, for ``GenerationOptions.tools``: with ``abilities`` (what the
        session can do), only the tools whose :attr:`Tool.needs` it has; None: every tool."""
        return [
            item.spec
            for item in self._tools.values()
            if abilities is None or item.needs is None or item.needs in abilities
        ]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def cancel_on_barge_in(self, name: str) -> bool:
        """Whether a barge-in cancels a running call of ``name`` (True for an unknown name)."""
        item = self._tools.get(name)
        return item is None or item.on_barge_in == "cancel"

    def timeout_for(self, name: str) -> float:
        item = self._tools.get(name)
        return self.default_timeout_s if item is None or item.timeout_s is None else item.timeout_s

    async def run(
        self, name: str, arguments_json: str, context: ToolContext, *, clock: Clock = _REAL_TIME
    ) -> str:
        """Call tool ``name`` with the JSON ``arguments_json``, under its timeout on ``clock``.

        Returns its result (a ``str`` as is, anything else JSON-encoded). Every failure (an
        unknown tool, arguments that are not JSON or do not match the schema, the timeout, an
        exception in the tool) raises :class:`ToolError` with a message for the model; nothing
        else is raised but ``CancelledError``. Cancel-safe: cancelling it cancels the tool.
        """
        item = self._tools.get(name)
        if item is None:
            known = ", ".join(self._tools) or "none"
            raise ToolError(f"there is no tool named {name!r} (tools: {known})", tool=name)
        arguments = _arguments(item, arguments_json)
        seconds = self.timeout_for(name)
        extra = {"session": context.session_id}
        log.debug("tool %s called with %s", name, arguments, extra=extra)
        try:
            async with timeout(clock, seconds):
                result = await _invoke(item, arguments, context)
        except TimeoutError:
            log.warning("tool %s timed out after %s s", name, seconds, extra=extra)
            raise ToolError(f"{name} did not finish within {seconds:g} s", tool=name) from None
        except ToolError as exc:
            log.info("tool %s failed: %s", name, exc, extra=extra)
            raise
        return _encode(item, result)


def _arguments(item: Tool, text: str) -> dict[str, Any]:
    """The call's arguments, parsed and checked against the tool's schema."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ToolError(
            f"{item.name}: the arguments are not JSON ({exc})", tool=item.name
        ) from None
    if not isinstance(value, dict):
        raise ToolError(f"{item.name}: the arguments must be a JSON object", tool=item.name)
    problems = argument_problems(value, item.spec.parameters)
    if problems:
        raise ToolError(f"{item.name}: {'; '.join(problems)}", tool=item.name)
    return value


async def _invoke(item: Tool, arguments: dict[str, Any], context: ToolContext) -> Any:
    """Await the tool; an exception of its own (a ``TimeoutError`` too) becomes a
    :class:`ToolError`, so that only the runner's timeout reads as one."""
    if item.context is not None:
        arguments = {**arguments, item.context: context}
    try:
        inspect.signature(item.function).bind(**arguments)
    except TypeError as exc:
        raise ToolError(f"{item.name}: {exc}", tool=item.name) from None
    try:
        return await item.function(**arguments)
    except ToolError:
        raise
    except Exception as exc:
        log.warning(
            "tool %s raised", item.name, exc_info=True, extra={"session": context.session_id}
        )
        message = f"{item.name} failed: {type(exc).__name__}: {exc}"
        raise ToolError(message, tool=item.name) from exc


def _encode(item: Tool, result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ToolError(
            f"{item.name} returned a value that is not JSON: {exc}", tool=item.name
        ) from None
