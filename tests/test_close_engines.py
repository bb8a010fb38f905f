"""Closing the engines at shutdown: each once (the judge is usually the LLM itself), every one
even when another fails, and the pools' workers stop."""

from __future__ import annotations

import pytest

from pipeline.engines import Engines
from voice.engines import close_engines


class Closable:
    def __init__(self, fails: bool = False) -> None:
        self.closed = 0
        self.fails = fails

    def close(self) -> None:
        self.closed += 1
        if self.fails:
            raise RuntimeError("cannot close")


def test_every_engine_is_closed_once_even_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    vad, asr, llm, tts = Closable(), Closable(fails=True), Closable(), Closable()
    engines = Engines(vad=vad, asr=asr, llm=llm, tts=tts, judge=llm)  # type: ignore[arg-type]
    close_engines(engines)
    assert [vad.closed, asr.closed, llm.closed, tts.closed] == [1, 1, 1, 1]
    assert "closing Closable failed" in caplog.text


def test_an_engine_without_close_is_left_alone() -> None:
    tts = Closable()
    engines = Engines(vad=object(), asr=object(), llm=object(), tts=tts)  # type: ignore[arg-type]
    close_engines(engines)
    assert tts.closed == 1
