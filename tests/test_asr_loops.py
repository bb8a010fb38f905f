"""Whisper's looping signature, which sends a fitted-window result back for a 30 s decode."""

from __future__ import annotations

import pytest

from pipeline.engines.asr_whisper import _loops


@pytest.mark.parametrize(
    "text",
    [
        "Can you tell me? Can you tell me?",
        "which planet is closest to the sun, which planet is closest to the sun",
        "Stop, wait a moment, I can't wait a moment, I can't wait",
        "no no no",
        "Thanks, that is enough. Thanks, that is enough. Thanks",
    ],
)
def test_repeated_runs_loop(text: str) -> None:
    assert _loops(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "What is the capital of France?",
        "I would like to book a table for two people tonight.",
        "No, no.",
        "Tell me how to make a cup of green tea.",
        "I think that that is right.",
    ],
)
def test_ordinary_sentences_do_not(text: str) -> None:
    assert not _loops(text)
