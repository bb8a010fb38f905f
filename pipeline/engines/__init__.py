"""Engines: VAD, ASR, LLM and TTS, each behind a small interface (this module).

A concrete engine is one module (``vad_silero.py``, ``asr_whisper.py``, ``llm_llama.py``,
``llm_openai.py``, ``tts_piper.py``) with one options dataclass. Models load once per process
and are shared by every session; whatever is per conversation (VAD state) is a separate object.
CPU-heavy inference runs in the engine's own thread pool, never on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..context import ChatMessage


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
    max_tokens: int = 200
    temperature: float = 0.7


class LanguageModel(Protocol):
    def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        """Text deltas of the assistant's reply. Closing or cancelling the iterator stops
        generation at the next token; raises :class:`pipeline.errors.EngineError`."""
        ...


class TurnJudge(Protocol):
    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        """The probability that the last message (the caller's words so far) is a finished
        turn, or ``None`` when it cannot tell now. Raises :class:`pipeline.errors.EngineError`."""
        ...


class SpeechSynthesizer(Protocol):
    sample_rate: int

    async def synthesize(self, text: str) -> np.ndarray:
        """Speech for ``text`` (int16 mono at ``sample_rate``). Cancel-safe."""
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
