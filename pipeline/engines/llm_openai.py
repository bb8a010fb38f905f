"""A remote LLM: any OpenAI-compatible streaming chat endpoint (vLLM, Ollama, llama.cpp's
server, OpenAI), through the official ``openai`` client. HTTP errors become
:class:`pipeline.errors.EngineError` with ``retryable`` set for timeouts, 429 and 5xx.

Prompts are fitted into the endpoint's context window ``n_ctx`` less the reply's
``max_tokens`` (``context_fit.py``), counted with the server's tokenize endpoint when it has one
(``_remote_tokens.py``), else by an upper bound.

Tools go to the endpoint natively (``tools``, ``tool_choice``; none at all for ``none``);
streamed ``delta.tool_calls`` become :class:`ToolCallDelta` (with the server's call ids),
``finish_reason`` and ``usage`` (asked with ``stream_options.include_usage``) the
:class:`StreamEnd`. A server that sends no usage gets the fitter's count of the prompt and
the number of streamed chunks (about one a token) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from ..context import ChatMessage
from ..context_fit import HeadMemory, Overhead, fit_messages, message_text
from ..errors import EngineError, EngineTimeout
from . import FinishReason, GenerationOptions, LlmEvent, StreamEnd, ToolCallDelta
from ._remote_tokens import HttpPost, RemoteTokenCounter
from .tools import TOOL_CHOICES, ToolSpec

_MARGIN = 16
"""Tokens of the context left unused besides the prompt and the reply."""
_OVERHEAD = Overhead(per_message=8, per_prompt=8)
"""Chat-template tokens around each text, an estimate (ChatML takes 5, Llama 3 about 7)."""


@dataclass(slots=True)
class RemoteLlmOptions:
    base_url: str
    model: str
    api_key: str = "none"
    n_ctx: int = 2048
    """The endpoint's context window (tokens)."""
    connect_timeout: float = 5.0
    first_token_timeout: float = 20.0
    next_token_timeout: float = 10.0


class OpenAiCompatibleLlm:
    def __init__(self, options: RemoteLlmOptions) -> None:
        self.options = options
        self._client = openai.AsyncOpenAI(
            base_url=options.base_url,
            api_key=options.api_key,
            max_retries=0,
            timeout=options.first_token_timeout,
        )
        self._http = HttpPost(options.base_url, options.api_key, options.connect_timeout)
        self._counter = RemoteTokenCounter(self._http, options.model)
        self._memory = HeadMemory()

    async def fit(
        self, messages: list[ChatMessage], max_tokens: int
    ) -> tuple[list[ChatMessage], int]:
        """The messages that fit ``n_ctx`` with room for the reply, and the reply's
        ``max_tokens`` (at most half the context). Cancel-safe."""
        n_ctx = self.options.n_ctx
        max_tokens = min(max_tokens, n_ctx // 2)
        budget = n_ctx - max_tokens - _MARGIN
        await self._count_what_may_fit(messages, budget)
        fitted = fit_messages(
            messages, budget, self._counter.cached, overhead=_OVERHEAD, memory=self._memory
        )
        return fitted, max_tokens

    async def _count_what_may_fit(self, messages: list[ChatMessage], budget: int) -> None:
        """Ask the server for the counts the fitting will use (the system prompt, then the
        newest messages while they fit), so that it runs on cached counts."""
        history = messages
        total = _OVERHEAD.per_prompt
        if messages and messages[0].role == "system":
            history = messages[1:]
            total += min(await self._counter.count(messages[0].content), budget // 2)
        for message in reversed(history):
            total += await self._counter.count(message_text(message)) + _OVERHEAD.per_message
            if total > budget:
                break

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        """See :class:`pipeline.engines.LanguageModel`; call ids are the server's."""
        timeout = self.options.first_token_timeout
        messages, max_tokens = await self.fit(messages, options.max_tokens)
        try:
            create: Any = self._client.chat.completions.create  # (typed for OpenAI's models)
            async with asyncio.timeout(timeout):
                response: Any = await create(
                    model=self.options.model,
                    messages=[_wire_message(m) for m in messages],
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=max_tokens,
                    temperature=options.temperature,
                    **_wire_tools(options),
                )
            reading = _Reading(self._estimate(messages))
            iterator = aiter(response)
            async with response:
                while True:
                    try:
                        async with asyncio.timeout(timeout):
                            chunk = await anext(iterator)
                    except StopAsyncIteration:
                        break
                    timeout = self.options.next_token_timeout
                    for event in reading.events(chunk):
                        yield event
            yield reading.end()
        except TimeoutError:
            raise EngineTimeout(f"llm: no token within {timeout:.1f} s", engine="llm") from None
        except openai.APIStatusError as exc:
            retryable = exc.status_code == 429 or exc.status_code >= 500
            raise EngineError(
                f"LLM endpoint answered {exc.status_code}: {exc.message}",
                engine="llm",
                retryable=retryable,
            ) from exc
        except openai.APIError as exc:  # connection errors, timeouts, bad responses
            raise EngineError(f"LLM endpoint failed: {exc}", engine="llm", retryable=True) from exc

    def _estimate(self, messages: list[ChatMessage]) -> int:
        """The prompt's tokens as the fitter counted them (for a server without usage)."""
        per_message = _OVERHEAD.per_message
        counted = sum(self._counter.cached(message_text(m)) + per_message for m in messages)
        return _OVERHEAD.per_prompt + counted

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    """A chat message in the OpenAI wire format."""
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:  # (content stays a string, "" if none: some servers refuse null)
        wire["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    return wire


def _wire_tools(options: GenerationOptions) -> dict[str, Any]:
    """``tools`` and ``tool_choice`` for the request (nothing for no tools or ``none``)."""
    if not options.tools or options.tool_choice == "none":
        return {}
    choice: Any = options.tool_choice
    if choice not in TOOL_CHOICES:
        choice = {"type": "function", "function": {"name": choice}}
    return {"tools": [_wire_tool(spec) for spec in options.tools], "tool_choice": choice}


def _wire_tool(spec: ToolSpec) -> dict[str, Any]:
    function = {"name": spec.name, "description": spec.description, "parameters": spec.parameters}
    return {"type": "function", "function": function}


class _Reading:
    """Streamed chunks in, events out: text, call pieces (with each call's id and name from
    its first piece), and at the end the finish reason and usage."""

    def __init__(self, estimated_input: int) -> None:
        self._input = estimated_input
        self._chunks = 0
        self._usage: Any = None
        self._finish: FinishReason | None = None
        self._calls: dict[int, tuple[str, str]] = {}

    def events(self, chunk: Any) -> list[LlmEvent]:
        if getattr(chunk, "usage", None) is not None:
            self._usage = chunk.usage
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        if choice.finish_reason:
            self._finish = _finish_reason(choice.finish_reason)
        events: list[LlmEvent] = []
        if choice.delta.content:
            events.append(choice.delta.content)
        for piece in choice.delta.tool_calls or []:
            call_id, name = self._calls.get(piece.index, ("", ""))
            function = piece.function
            call_id = piece.id or call_id
            name = (function.name if function and function.name else "") or name
            self._calls[piece.index] = (call_id, name)
            arguments = (function.arguments if function else None) or ""
            events.append(ToolCallDelta(piece.index, call_id, name, arguments))
        self._chunks += bool(events)
        return events

    def end(self) -> StreamEnd:
        """Raises :class:`EngineError` for a stream that stopped without a ``finish_reason``:
        the server failed mid-reply (llama_cpp.server, for one, just ends the stream)."""
        finish, usage = self._finish, self._usage
        if finish is None:
            raise EngineError(
                "the LLM endpoint ended its stream without a finish_reason: it failed mid-reply",
                engine="llm",
                retryable=True,
            )
        if usage is None:
            return StreamEnd(finish, self._input, self._chunks)
        return StreamEnd(finish, usage.prompt_tokens or 0, usage.completion_tokens or 0)


def _finish_reason(reason: str) -> FinishReason:
    if reason in ("tool_calls", "function_call"):
        return "tool_calls"
    return "length" if reason == "length" else "stop"
