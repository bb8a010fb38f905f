"""A remote LLM: any OpenAI-compatible streaming chat endpoint (vLLM, Ollama, llama.cpp's
server, OpenAI), through the official ``openai`` client. HTTP errors become
:class:`pipeline.errors.EngineError` with ``retryable`` set for timeouts, 429 and 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai

from ..context import ChatMessage
from ..errors import EngineError, EngineTimeout
from . import GenerationOptions


@dataclass(slots=True)
class RemoteLlmOptions:
    base_url: str
    model: str
    api_key: str = "none"
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

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[str]:
        timeout = self.options.first_token_timeout
        try:
            async with asyncio.timeout(timeout):
                response: Any = await self._client.chat.completions.create(
                    model=self.options.model,
                    messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                    stream=True,
                    max_tokens=options.max_tokens,
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
