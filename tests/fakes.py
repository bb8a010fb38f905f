"""Fake engines for unit tests of one stage: deterministic, instant, no threads.

The VAD calls a window speech when it is loud; the TTS makes one tone per word of fixed length;
the LLM replays scripted replies and records the messages it was given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from pipeline.clock import VirtualClock
from pipeline.context import ChatMessage
from pipeline.engines import Engines, GenerationOptions, LlmEvent, ToolCallDelta

RATE = 16_000


def tone(seconds: float, rate: int = RATE, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 220 * t) * amplitude).astype(np.int16)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


class LoudnessVad:
    """Speech probability 0.95 for a loud window, 0.3 for a soft one (a word's first sound,
    ``tone(amplitude=800)``), 0.02 otherwise."""

    window = 512

    def stream(self) -> LoudnessVad:
        return self

    async def probabilities(self, windows: np.ndarray) -> list[float]:
        return [_probability(float(np.abs(w).mean())) for w in windows]


def _probability(level: float) -> float:
    return 0.95 if level > 1000 else 0.3 if level > 300 else 0.02


class ScriptedAsr:
    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.calls: list[int] = []
        self.owners: list[str] = []

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        self.calls.append(len(audio))
        self.owners.append(owner)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


Script = str | list[LlmEvent]
"""A reply: its words (split into word deltas), or exactly the events to yield."""


class ScriptedLlm:
    def __init__(self, replies: list[Script]) -> None:
        self.replies = list(replies)
        self.seen: list[list[ChatMessage]] = []
        self.options: list[GenerationOptions] = []
        self._clock: VirtualClock | None = None
        self._delay = 0.0

    def delay(self, clock: VirtualClock, seconds: float) -> None:
        """Wait ``seconds`` of virtual time before the first token."""
        self._clock, self._delay = clock, seconds

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        self.seen.append(list(messages))
        self.options.append(options)
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if self._clock is not None:
            await self._clock.sleep_until(self._clock.now() + self._delay)
        if isinstance(reply, list):
            for event in reply:
                yield event
            return
        for word in reply.split(" "):
            yield word + " "


def call(name: str, arguments: str, call_id: str = "call_1", index: int = 0) -> list[LlmEvent]:
    """A function call as an engine streams it: the arguments in two pieces."""
    half = len(arguments) // 2
    return [
        ToolCallDelta(index, call_id, name, arguments[:half]),
        ToolCallDelta(index, call_id, name, arguments[half:]),
    ]


class ScriptedJudge:
    """End-of-turn probabilities by transcript (``default`` for the rest); records what it saw."""

    def __init__(
        self, scores: dict[str, float], default: float | None = None, beside_replies: bool = False
    ) -> None:
        self.scores, self.default = scores, default
        self.beside_replies = beside_replies
        self.seen: list[list[ChatMessage]] = []
        self._clock: VirtualClock | None = None
        self._delay = 0.0

    def delay(self, clock: VirtualClock, seconds: float) -> None:
        self._clock, self._delay = clock, seconds

    async def end_of_turn(self, messages: list[ChatMessage]) -> float | None:
        self.seen.append(list(messages))
        if self._clock is not None:
            await self._clock.sleep_until(self._clock.now() + self._delay)
        return self.scores.get(messages[-1].content, self.default)


class ToneTts:
    """``ms_per_word / speed`` of a loud tone per word, at 24 kHz; records each text and the
    voice and speed it was asked for."""

    sample_rate = 24_000

    def __init__(self, ms_per_word: int = 200) -> None:
        self.ms_per_word = ms_per_word
        self.texts: list[str] = []
        self.requests: list[tuple[str, str | None, float]] = []
        """(text, voice, speed) of each synthesis."""
        self.dues: list[float | None] = []
        """When each synthesis said its audio was needed."""
        self.behind = 0
        """What :meth:`overdue` says: other syntheses already due that wait."""

    def overdue(self) -> int:
        return self.behind

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        self.texts.append(text)
        self.requests.append((text, voice, speed))
        self.dues.append(due)
        return tone(len(text.split()) * self.ms_per_word / 1000 / speed, self.sample_rate)


def fake_engines(asr: list[str], llm: list[str], ms_per_word: int = 200) -> Engines:
    return Engines(
        vad=LoudnessVad(),
        asr=ScriptedAsr(asr),
        llm=ScriptedLlm(llm),
        tts=ToneTts(ms_per_word),
    )
