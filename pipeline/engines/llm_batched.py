"""The embedded LLM serving several conversations at once: one llama.cpp context, batched.

``LlamaLlm`` serves one generation at a time, so a caller's first token waits for the whole of
another caller's reply. Here one context holds ``parallel`` sequences (each with its own KV
cells, ``n_ctx`` of them: a sequence's reply is exactly what it would be alone) and one thread
(:class:`_Worker`) runs it: each ``llama_decode`` evaluates the next token of every reply in
progress together with the prompt tokens of the callers still waiting for their first one
(``_batch_plan.py`` decides which). What batching saves on a CPU is the wait: a new caller's
prompt is evaluated in the next step, not after the others' tails. It saves little compute: a
step of generated tokens costs about their number times one (the bundled model in Q8_0 on one
thread of the 2-core EPYC used here: 10, 37, 59 and 97 ms for 1, 2, 4 and 8 replies; as shipped,
Q4_1: 12, 22, 40 and 85 ms), so a reply's first words share steps with few prompt tokens
(``first_words_chunk``) and the tails of replies read aloud are paced (below).
A step of one reply's token uses ``threads``; steps with prompt tokens, or with
several replies' tokens (``batch_threads_replies``), ``batch_threads`` while nothing else is on
the CPU. With ``tail_rate``, a reply read aloud (``GenerationOptions.spoken``) past
its first ``head_tokens`` is paced (it only has to stay ahead of its speech), leaving the cores
to other callers' first words.

Everything else is ``LlamaLlm``'s: the prompt rendering and fitting (``_fit``, to ``n_ctx``),
the end-of-turn judge (a scoring job: the judged prompt is evaluated in a sequence, its logits
read at the caller's last tokens; it runs beside replies, where ``LlamaLlm`` gives up), function
calls (a grammar sampler per job: the marker, then JSON) and the usage counts. Each sequence's
cache outlives its job: the next job goes where the longest prefix of its prompt is cached
(the session's history; or another sequence's, copied), so a session's next turn evaluates only
its new words.

Threads: the worker is the only thread that touches the context; a request's own logic
(fitting, tool-marker scanning, parsing a call) runs in the engine's pool, ``parallel + 2``
threads that mostly wait for tokens. Every wait for a token is bounded
(``first_token_timeout``, ``next_token_timeout``). Cancel-safe: closing a reply's stream marks
its job; the worker drops it at its next step and removes the reply's tokens from the sequence
(the prompt stays cached), and the context goes on serving the others.
"""

from __future__ import annotations

import atexit
import codecs
import ctypes
import logging
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ..context import ChatMessage
from ..errors import ConfigError, EngineError, EngineTimeout
from . import FinishReason, GenerationOptions, LlmEvent
from ._batch_plan import Copy, Entry, Job, Op, Planner, Remove, Shift
from ._bridge import stream_from_thread
from ._cpu import CpuJobs
from ._threads import EngineThreads
from .llm_llama import Judged, LlamaLlm, LlamaOptions, Pieces, token_probability

log = logging.getLogger("voice.llm")
_TOP_K, _TOP_P, _MIN_P = 40, 0.95, 0.05
"""Sampling at a temperature above 0, as llama-cpp-python's ``create_completion`` does."""
_END = object()


@dataclass(slots=True)
class BatchedOptions:
    parallel: int = 8
    """Conversations evaluated together (llama.cpp sequences), each in a context of the
    engine's ``n_ctx`` tokens."""
    chunk: int = 256
    """The most prompt tokens evaluated in one step (replies in progress wait for no longer)."""
    head_tokens: int = 24
    """A reply's first tokens, generated as fast as possible (its first clauses)."""
    tail_rate: float = 0.0
    """Tokens a second the tail of a reply read aloud is paced at (speech is 3-4): the cores it
    leaves go to other callers' first words. 0: as fast as possible."""
    tail_yield_rate: float = 0.0
    """The tail's rate while another caller waits for their first words (0: ``tail_rate``)."""
    cpu: CpuJobs | None = None
    """Shared with the other engines: a step counts as a job on the CPU."""
    batch_threads_replies: bool = True
    """A step of several replies' tokens (no prompt) also gets ``batch_threads`` (under the same
    rule as a prompt's): such a step costs about the number of replies times one."""
    batch_threads_alone: bool = True
    """A prompt is evaluated on ``batch_threads`` only while nothing else is on the CPU, else
    on ``threads`` (``_cpu.py``)."""
    keep_conversations: bool = True
    """Slots chosen so that callers keep each other's conversations cached (``_batch_plan``)."""
    first_words_chunk: int = 0
    """While a reply makes its first words, the most prompt tokens evaluated in one step
    beside it (0: ``chunk``)."""


@dataclass(slots=True, eq=False)
class _Request:
    """A job and its way back: pieces of text into ``out``, then ``_END`` or an exception."""

    job: Job
    temperature: float = 0.0
    grammar: str | None = None
    scores: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Scoring: position → the tokens whose probability (summed) is multiplied in."""
    out: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    """This completion was closed, or timed out."""
    stream: threading.Event | None = None
    """Its stream was closed (a reply may make two completions: words, then a call)."""
    probability: float = 1.0
    finish: FinishReason = "stop"
    sampler: Any = None
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


class BatchedLlm(LlamaLlm):
    beside_replies = True
    """The judge's prompt and the reply's are evaluated once, the reply's copying the judge's
    (``_batch_plan.Planner._follows``)."""

    def __init__(self, options: LlamaOptions, batched: BatchedOptions | None = None) -> None:
        batched = batched or BatchedOptions()
        if batched.parallel < 1 or batched.chunk < 1:
            raise ConfigError("llm.parallel must be at least 1")
        if min(batched.first_words_chunk, batched.tail_rate, batched.tail_yield_rate) < 0:
            raise ConfigError(
                "llm.first_words_chunk, llm.tail_rate and llm.tail_yield_rate must not be negative"
            )
        self.batched = batched
        super().__init__(options)
        self._threads = EngineThreads("llm", batched.parallel + 2)
        self._fit_lock = threading.Lock()
        self._worker = _Worker(self._llama, options, batched)

    def _load(self, options: LlamaOptions) -> Any:
        """The model, tokenizer and chat template; this ``Llama``'s own context is tiny and
        unused (the worker makes the one that serves)."""
        from llama_cpp import Llama

        return Llama(
            model_path=str(options.model_path),
            n_ctx=64,
            n_batch=64,
            n_threads=1,
            n_threads_batch=1,
            n_gpu_layers=options.gpu_layers,
            verbose=False,
        )

    def _fit(
        self, messages: list[ChatMessage], max_tokens: int, tail: Any = ()
    ) -> tuple[list[ChatMessage], list[int]]:
        with self._fit_lock:  # the memory of where history was cut is shared
            return LlamaLlm._fit(self, messages, max_tokens, tail)

    def _complete(
        self, prompt: list[int], budget: int, temperature: float, grammar: Any = None
    ) -> Pieces:
        return _BatchedPieces(self._worker, prompt, budget, temperature, grammar, self.options)

    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        """See :class:`pipeline.engines.LanguageModel`. Closing or cancelling the iterator
        cancels the job at the worker's next step."""
        return self._stream(messages, options)

    async def _stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        cancelled = threading.Event()

        def make() -> Iterator[LlmEvent]:
            _CANCEL.value = cancelled  # (the pool thread's; its completions are this stream's)
            _CANCEL.spoken = options.spoken
            try:
                yield from self._generate(messages, options)
            finally:
                _CANCEL.value, _CANCEL.spoken = None, False

        inner = cast(
            AsyncGenerator[LlmEvent, None],
            stream_from_thread(
                self._threads,
                make,
                engine="llm",
                first_timeout=self.options.first_token_timeout,
                next_timeout=self.options.next_token_timeout,
            ),
        )
        try:
            async with aclosing(inner):
                async for item in inner:
                    yield item
        finally:
            cancelled.set()
            self._worker.wake()

    def _generate(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> Iterator[LlmEvent]:
        yield from self._reply(messages, options)

    def _end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        judged = self._judged(messages)
        if judged is None:
            return None
        return self._worker.score(judged, self.options.first_token_timeout)

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """The probability that the last (user) message is complete; ``None`` if unknown.
        Runs beside replies in progress. Cancelling the await abandons the result."""
        try:
            return await self._threads.run(self._end_of_turn, messages)
        except EngineError:
            raise
        except Exception as exc:  # llama.cpp errors are RuntimeError/ValueError
            raise EngineError(f"end-of-turn scoring failed: {exc}", engine="llm") from exc

    def warm_up(self, instructions: str = "") -> None:
        """One short reply; with ``instructions`` (the sessions' default system prompt) that
        prompt stays cached, and the first caller's first turn copies it instead of evaluating
        it."""
        system = [ChatMessage("system", instructions)] if instructions else []
        for _ in self._reply([*system, ChatMessage("user", "Hi")], GenerationOptions(max_tokens=4)):
            pass

    def close(self) -> None:
        """Stop the worker (jobs in progress fail) and free the context."""
        self._worker.close()
        self._threads.shutdown()


_CANCEL = threading.local()
"""The cancel flag of the stream a pool thread is generating for, and whether it is read aloud
(``spoken``: its words may be paced), set by ``make``."""


class _BatchedPieces:
    """One completion through the worker, consumed in a pool thread."""

    def __init__(
        self,
        worker: _Worker,
        prompt: list[int],
        budget: int,
        temperature: float,
        grammar: Any,
        options: LlamaOptions,
    ) -> None:
        self.finish: FinishReason = "stop"
        self.count = 0
        self._worker = worker
        self._options = options
        self._request = _Request(
            Job(
                list(prompt),
                budget=budget,
                paced=grammar is None and getattr(_CANCEL, "spoken", False),
            ),
            temperature=temperature,
            grammar=None if grammar is None else str(grammar._grammar),
            stream=getattr(_CANCEL, "value", None),
        )
        self._started = False

    def __iter__(self) -> Iterator[str]:
        request = self._request
        if request.job.budget <= 0:
            self.finish = "length"
            return
        self._worker.submit(request)
        self._started = True
        wait = self._options.first_token_timeout
        while True:
            item = _get(request, wait)
            if item is _END:
                self.finish = request.finish
                return
            if isinstance(item, BaseException):
                raise item
            self.count += 1
            wait = self._options.next_token_timeout
            if item:
                yield str(item)

    def close(self) -> None:
        if self._started:
            self._worker.cancel(self._request)


def _cancelled(request: _Request) -> bool:
    return request.cancelled.is_set() or (request.stream is not None and request.stream.is_set())


def _get(request: _Request, wait: float) -> object:
    try:
        return request.out.get(timeout=wait)
    except queue.Empty:
        request.cancelled.set()
        raise EngineTimeout(f"llm: no token within {wait:.1f} s", engine="llm") from None


class _Worker:
    """The thread that owns the llama.cpp context and runs the plan."""

    def __init__(self, llama: Any, options: LlamaOptions, batched: BatchedOptions) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self._model = llama._model.model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = options.n_ctx * batched.parallel
        params.n_batch = params.n_ubatch = max(batched.chunk + batched.parallel, 64)
        params.n_seq_max = batched.parallel
        # One buffer per sequence, not one shared: a sequence's attention then never sums over
        # another's cells, so its reply is exactly what it would be alone.
        params.kv_unified = False
        params.n_threads = options.threads
        params.n_threads_batch = options.batch_threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            raise ConfigError(
                f"llama.cpp cannot make {batched.parallel} contexts of {options.n_ctx} tokens"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._capacity = int(params.n_batch)
        self._batch = llama_cpp.llama_batch_init(self._capacity, 0, 1)
        self._options = options
        self._cpu = batched.cpu or CpuJobs()
        self._alone_only = batched.batch_threads_alone  # batch threads only while alone
        self._replies_batched = batched.batch_threads_replies
        self._plan = Planner(
            batched.parallel,
            batched.chunk,
            head=batched.head_tokens,
            pace=batched.tail_rate,
            yield_pace=batched.tail_yield_rate,
            keep=batched.keep_conversations,
            first_chunk=batched.first_words_chunk,
            shift=bool(llama_cpp.llama_memory_can_shift(self._memory)),
        )
        self._requests: dict[int, _Request] = {}  # id(job) → request
        self._inbox: list[_Request] = []
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llm-batch", daemon=True)
        self._thread.start()
        # The context must go before the model, which llama-cpp-python frees at exit.
        atexit.register(_close, weakref.ref(self))

    # ------------------------------------------------------------ any thread

    def submit(self, request: _Request) -> None:
        with self._lock:
            if self._closed:
                raise EngineError("the LLM is shut down", engine="llm")
            self._inbox.append(request)
            self._lock.notify()

    def cancel(self, request: _Request) -> None:
        request.cancelled.set()
        self.wake()

    def wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def score(self, judged: Judged, wait: float) -> float:
        """The judge's probability (see :class:`Judged`), computed in a sequence."""
        scores = judged.positions()
        request = _Request(Job(list(judged.said), wanted=frozenset(scores)), scores=scores)
        self.submit(request)
        item = _get(request, wait)
        if isinstance(item, BaseException):
            raise item
        return request.probability

    def close(self) -> None:
        """Stop after the step in progress; waiting and running jobs fail. Idempotent."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------ the worker's thread

    def _run(self) -> None:
        try:
            while self._next():
                pass
        finally:
            for request in list(self._requests.values()) + self._inbox:
                self._fail(request, EngineError("the LLM is shut down", engine="llm"))
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)

    def _next(self) -> bool:
        with self._lock:
            self._wait()
            if self._closed:
                return False
            for request in self._inbox:
                self._requests[id(request.job)] = request
                self._plan.add(request.job)
            self._inbox.clear()
        self._drop_cancelled()
        self._apply(self._plan.assign())
        for job in self._plan.running:
            request = self._requests[id(job)]
            if request.sampler is None and job.budget > 0:
                try:
                    request.sampler = self._sampler(request)
                except EngineError as exc:
                    self._apply(self._plan.drop(job))
                    self._fail(request, exc)
        entries = self._plan.step(time.monotonic())
        if entries:
            self._decode(entries)
        return True

    def _wait(self) -> None:
        """Until there is work: a request, a cancellation, or a step due (paced replies)."""
        while not self._closed and not self._inbox:
            if any(_cancelled(r) for r in self._requests.values()):
                return
            hold = self._plan.wait(time.monotonic())
            if hold is not None and hold <= 0:
                return
            if hold is None:
                self._lock.wait()
            else:  # woken early by a request or a cancellation, or when the step is due
                self._lock.wait(timeout=hold)

    def _drop_cancelled(self) -> None:
        for request in list(self._requests.values()):
            if _cancelled(request):
                self._apply(self._plan.drop(request.job))
                self._end(request)

    def _apply(self, ops: list[Op]) -> None:
        lib, memory = self._lib, self._memory
        for op in ops:
            if isinstance(op, Remove):
                lib.llama_memory_seq_rm(memory, op.slot, op.start, -1)
            elif isinstance(op, Copy):  # (each sequence has its own cells: copied whole, cut)
                lib.llama_memory_seq_cp(memory, op.source, op.slot, -1, -1)
                lib.llama_memory_seq_rm(memory, op.slot, op.length, -1)
            elif isinstance(op, Shift):  # (RoPE: llama.cpp re-rotates the keys it moved)
                lib.llama_memory_seq_rm(memory, op.slot, op.start, op.start + op.delta)
                lib.llama_memory_seq_add(memory, op.slot, op.start + op.delta, -1, -op.delta)

    def _decode(self, entries: list[Entry]) -> None:
        # llama.cpp uses its batch threads for any step of more than one token: those are for
        # prompts and, with batch_threads_replies, several replies' tokens (a step costs about
        # their number times one), and only while nothing else is on the CPU (_cpu.py: threads
        # that wait for a busy core at every barrier are slower than one); one reply's token
        # uses the generation threads, leaving the other cores to the ASR and TTS of others.
        prompt = any(e.job.prefilling for e in entries)
        several = prompt or (self._replies_batched and len(entries) > 1)  # (replies' tokens)
        alone = several and (self._cpu.alone() or not self._alone_only)
        threads = self._options.batch_threads if alone else self._options.threads
        self._lib.llama_set_n_threads(self._ctx, self._options.threads, threads)
        with self._cpu.job():
            self._decode_step(entries)

    def _decode_step(self, entries: list[Entry]) -> None:
        while entries:
            self._fill(entries)
            rc = self._lib.llama_decode(self._ctx, self._batch)
            if rc == 0:
                break
            if rc != 1:  # (1: no room in the cache; anything else is an error)
                for request in {id(e.job): self._requests[id(e.job)] for e in entries}.values():
                    self._apply(self._plan.drop(request.job))
                    self._fail(request, EngineError(f"llama_decode failed ({rc})", engine="llm"))
                return
            entries = self._make_room(entries)
        else:
            return
        self._plan.evaluated(entries)
        for index, entry in enumerate(entries):
            if entry.logits:
                self._logits(entry, index)

    def _make_room(self, entries: list[Entry]) -> list[Entry]:
        """Fail the newest job of the step (its sequence is full: not expected, prompts are
        fitted to ``n_ctx`` less the reply); the step left."""
        newest = max((e.job for e in entries), key=lambda j: self._plan.running.index(j))
        self._apply(self._plan.drop(newest))
        self._fail(
            self._requests[id(newest)],
            EngineError("the LLM's KV cache is full", engine="llm", retryable=True),
        )
        return [e for e in entries if e.job is not newest]

    def _fill(self, entries: list[Entry]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, entry in enumerate(entries):
            batch.token[i] = entry.token
            batch.pos[i] = entry.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = entry.job.slot
            batch.logits[i] = entry.logits

    def _logits(self, entry: Entry, index: int) -> None:
        request = self._requests.get(id(entry.job))
        if request is None:  # failed earlier in this step
            return
        job = entry.job
        last = entry.pos >= len(job.prompt) - 1  # (prompt evaluated: then every entry is)
        if job.budget <= 0:
            request.probability *= self._probability(index, request.scores[entry.pos])
            if last:
                self._plan.finish(job)
                self._end(request)
            return
        if not last:
            return
        token = int(self._lib.llama_sampler_sample(request.sampler, self._ctx, index))
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            self._plan.finish(job)
            self._end(request)
            return
        self._plan.sampled(job, token, time.monotonic())
        request.out.put(request.decoder.decode(self._piece(token)))
        if job.generated >= job.budget:
            request.finish = "length"
            self._plan.finish(job)
            self._end(request)

    def _probability(self, index: int, tokens: tuple[int, ...]) -> float:
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return token_probability(np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)), tokens)

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
        if n < 0:
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, -n, 0, False)
        return bytes(buffer.raw[:n])

    def _sampler(self, request: _Request) -> Any:
        lib = self._lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if request.grammar is not None:
            grammar = lib.llama_sampler_init_grammar(self._vocab, request.grammar.encode(), b"root")
            if not grammar:
                lib.llama_sampler_free(chain)
                raise EngineError("llama.cpp rejected the tools' grammar", engine="llm")
            lib.llama_sampler_chain_add(chain, grammar)
        if request.temperature <= 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(_TOP_K))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(_TOP_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(_MIN_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(request.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(lib.LLAMA_DEFAULT_SEED))
        return chain

    def _end(self, request: _Request) -> None:
        self._release(request)
        if not _cancelled(request):
            tail = request.decoder.decode(b"", final=True)
            if tail:
                request.out.put(tail)
        request.out.put(_END)

    def _fail(self, request: _Request, error: EngineError) -> None:
        self._release(request)
        request.out.put(error)

    def _release(self, request: _Request) -> None:
        self._requests.pop(id(request.job), None)
        if request.sampler is not None:
            self._lib.llama_sampler_free(request.sampler)
            request.sampler = None


def _close(worker: weakref.ref[_Worker]) -> None:
    alive = worker()
    if alive is not None:
        alive.close()
