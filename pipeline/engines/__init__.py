"""Engines: VAD, ASR, LLM and TTS, each behind a small interface (this module).

A concrete engine is one module (``vad_silero.py``, ``asr_whisper.py``, ``llm_llama.py``,
``llm_batched.py``, ``llm_openai.py``, ``tts_piper.py``) with one options dataclass. Models
load once per process and are shared by every session; whatever is per conversation (VAD state)
is a separate object.
CPU-heavy inference runs in the engine's own thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from ..context import ChatMessage
from .tools import ToolSpec


class VadStream(Protocol):
    """Per-session VAD state. ``window`` samples at 16 kHz per call."""

    window: int

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        """Speech probability for each row of ``windows`` (shape ``(n, window)``, int16), in
        order, carrying state across calls. Cancel-safe (state advances only on success)."""
        ...


class VoiceActivityDetector(Protocol):
    def stream(self) -> VadStream:
        """A fresh per-session stream over the shared model."""
        ...


class SpeechRecognizer(Protocol):
    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        """Text of ``audio`` (int16, 16 kHz mono). ``owner`` (the session id) is whose turn it
        is: the recognizer is shared, and it serves owners fairly (one owner's long audio does
        not hold up another's). Cancel-safe: the result is dropped."""
        ...


@dataclass(slots=True)
class GenerationOptions:
    max_tokens: int = 120
    temperature: float = 0.6
    tools: list[ToolSpec] = field(default_factory=list)
    """Functions the reply may call (checked with :func:`tools.check_tools`)."""
    tool_choice: str = "auto"
    """``auto`` (the model decides), ``none`` (text only), ``required`` (a call to one of
    ``tools``) or a tool's name (a call to that one)."""
    spoken: bool = False
    """The reply is read aloud: its tail only has to stay ahead of the speech, so an engine
    serving several callers may pace it (``llm.tail_rate``) and give the cores to the others."""


@dataclass(slots=True)
class ToolCallDelta:
    """The next piece of a function call's JSON ``arguments``. Every piece of one call carries
    its ``index`` (0, 1, … in the reply), ``call_id`` and ``name``; joined in order, the pieces
    of an index are the call's arguments, a JSON object matching the tool's schema."""

    index: int
    call_id: str
    name: str
    arguments: str


FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(slots=True)
class StreamEnd:
    """The last item of a reply: why it ended (``length``: ``max_tokens`` was reached, the
    reply is incomplete, and so is a call in progress, which must not be run) and its usage
    in the model's tokens (the prompt as sent, after fitting; the reply)."""

    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int


LlmEvent = str | ToolCallDelta | StreamEnd
"""What :meth:`LanguageModel.stream` yields: text deltas, call pieces, and one end."""


class LanguageModel(Protocol):
    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        """The assistant's reply: ``str`` text deltas (spoken words, which may precede a
        call), :class:`ToolCallDelta` pieces of function calls when ``options.tools`` allow,
        and finally one :class:`StreamEnd`. ``messages`` may hold earlier calls (assistant
        ``tool_calls``) and their outputs (``tool`` messages). Closing or cancelling the
        iterator stops generation at the next token; raises
        :class:`pipeline.errors.EngineError` (also for a tool the engine cannot use)."""
        ...


class TurnJudge(Protocol):
    beside_replies: bool
    """It scores while a reply to the same words is being prepared (the batched engine: the
    reply's prompt continues the judge's, evaluated once); else the reply waits for it."""

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """The probability that the last message (the caller's words so far) is a finished
        turn, or ``None`` when it cannot tell now. Raises :class:`pipeline.errors.EngineError`."""
        ...


class SpeechSynthesizer(Protocol):
    sample_rate: int

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        """Speech for ``text`` (int16 mono at ``sample_rate``). ``speed``: the speaking rate,
        relative to the voice's own (1.5 is half as fast again, so about 1/1.5 as long).
        ``voice``: one of the engine's voices by name; ``None``: its default. ``due``: when
        the audio is needed, on the session clock's scale (a reply's first clause: when the
        reply began; a later one: when the audio before it runs out); an engine shared by
        sessions serves the most urgent first, ``None``: at once. Cancel-safe."""
        ...

    def overdue(self) -> int:
        """Syntheses already due that wait for the engine (every session's): it is behind,
        and a synthesis asked for now waits. 0 for an engine that starts each at once."""
        ...


@dataclass(slots=True)
class Engines:
    """The shared engines a session uses."""

    vad: VoiceActivityDetector
    asr: SpeechRecognizer
    llm: LanguageModel
    tts: SpeechSynthesizer
    judge: TurnJudge | None = None
    """Scores whether the caller has finished (the embedded LLM); ``None``: words only."""
