"""Drive a :class:`Session` on virtual time with fake engines and record what it emits."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, TypeVar

import numpy as np

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.engines import Engines
from pipeline.reply import ReplySettings
from pipeline.session import Session, SessionLimits, SessionSettings, Tuning

E = TypeVar("E")
CHUNK_S = 0.02


class Harness:
    def __init__(
        self,
        engines: Engines,
        settings: SessionSettings | None = None,
        limits: SessionLimits | None = None,
        lead_ms: int = 60,
        tuning: Tuning | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.session = Session(
            engines,
            settings or SessionSettings(output_rate=24_000),
            reply_settings=ReplySettings(lead_ms=lead_ms),
            limits=limits,
            clock=self.clock,
            tuning=tuning,
        )
        self.events: list[tuple[float, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Harness:
        self._tasks = [
            asyncio.create_task(self.session.run()),
            asyncio.create_task(self._collect()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.session.close("test over")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _collect(self) -> None:
        while True:
            event = await self.session.next_event()
            self.events.append((self.clock.now(), event))

    async def feed(self, audio: np.ndarray, rate: int = 16_000) -> None:
        """Stream ``audio`` in real time (20 ms chunks, the clock advancing between them)."""
        step = int(rate * CHUNK_S)
        for start in range(0, len(audio), step):
            self.session.append_audio(audio[start : start + step], rate)
            await self.clock.advance(CHUNK_S)

    async def feed_until(self, chunk: np.ndarray, kind: type, limit_s: float = 30.0) -> None:
        """Keep streaming ``chunk`` (e.g. silence) until an event of ``kind`` appears."""
        deadline = self.clock.now() + limit_s
        while not self.of(kind):
            assert self.clock.now() < deadline, f"no {kind.__name__} within {limit_s} s"
            await self.feed(chunk)

    def of(self, kind: type[E]) -> list[E]:
        return [e for _, e in self.events if isinstance(e, kind)]

    def timed(self, kind: type[E]) -> list[tuple[float, E]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]

    def types(self) -> list[str]:
        return [type(e).__name__ for _, e in self.events if not isinstance(e, m.ReplyAudio)]
