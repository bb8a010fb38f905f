"""A remote LLM: any OpenAI-compatible streaming chat endpoint (vLLM, Ollama, llama.cpp's
server, OpenAI), through the official ``openai`` client. HTTP errors become
:class:`pipeline.errors.EngineError` with ``retryable`` set for timeouts, 429 and 5xx.

Prompts are fitted into the endpoint's context window ``n_ctx`` less the reply's
``max_tokens`` (``context_fit.py``), counted with the server's tokenize endpoint when it has one
(``_remote_tokens.py``), else by an upper bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from ..context import ChatMessage
from ..context_fit import HeadMemory, Overhead, fit_messages
from ..errors import EngineError, EngineTimeout
from . import GenerationOptions
from ._remote_tokens import HttpPost, RemoteTokenCounter

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
            total += await self._counter.count(message.content) + _OVERHEAD.per_message
            if total > budget:
                break

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[str]:
        timeout = self.options.first_token_timeout
        messages, max_tokens = await self.fit(messages, options.max_tokens)
        try:
            async with asyncio.timeout(timeout):
                response: Any = await self._client.chat.completions.create(
                    model=self.options.model,
                    messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                    stream=True,
                    max_tokens=max_tokens,
                    temperature=options.temperature,
                )
            iterator = aiter(response)
            async with response:
                while True:
                    try:
                        async with asyncio.timeout(timeout):
                            chunk = await anext(iterator)
                    except StopAsyncIteration:
                        return
                    timeout = self.options.next_token_timeout
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
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

    async def aclose(self) -> None:
        await self._client.close()
        await self._http.aclose()
