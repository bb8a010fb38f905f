"""Whisper's looping signature, which sends a fitted-window result back to be decoded again:
with twice the padding, then with the full 30 s window."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pipeline.engines import Engines
from pipeline.engines.asr_whisper import WhisperAsr, _loops


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


def _tried(asr: WhisperAsr, seconds: float, loops: int) -> tuple[list[int], int]:
    """Transcribe ``seconds`` of audio while the fitted window loops ``loops`` times: the
    paddings tried (frames) and how many full-window decodes followed."""
    pads: list[int] = []
    full: list[int] = []

    def fitted(samples: np.ndarray, pad_frames: int) -> str | None:
        pads.append(pad_frames)
        return None if len(pads) <= loops else "fitted"

    def whole(samples: np.ndarray) -> str:
        full.append(len(samples))
        return "full"

    asr._transcribe_fitted = fitted  # type: ignore[method-assign]
    asr._transcribe_full = whole  # type: ignore[method-assign]
    text = asr._transcribe(np.zeros(int(seconds * 16000), np.int16))
    assert text == ("full" if full else "fitted")
    return pads, len(full)


def test_a_looping_fitted_window_is_redone_with_twice_the_padding_before_the_full_one(
    engines: Engines,
) -> None:
    asr = engines.asr
    assert isinstance(asr, WhisperAsr) and asr.options.fit_window
    pad = int(asr.options.window_pad_s * 100)
    clone = copy.copy(asr)  # (the session-wide engine keeps its own methods)
    assert _tried(clone, 2.5, loops=0) == ([pad], 0)
    assert _tried(copy.copy(asr), 2.5, loops=1) == ([pad, 2 * pad], 0)
    assert _tried(copy.copy(asr), 2.5, loops=2) == ([pad, 2 * pad], 1)
    # a long utterance whose doubled padding would pass 30 s goes to the full window at once
    assert _tried(copy.copy(asr), 30 - asr.options.window_pad_s - 1, loops=1) == ([pad], 1)
