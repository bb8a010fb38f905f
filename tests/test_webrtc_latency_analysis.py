"""The browser benchmark's reading of a barge-in run (``benchmarks/webrtc_latency.py``): where the
caller starts to speak on the page's level timeline, and what became of each cut-in: the story
it cut short, a story already over (nothing to interrupt), or a story that played on over it.
Page data made by hand; no browser."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.webrtc_latency import REACTION_MS, cut_in_outcomes, utterance_onsets

STEP = 10


def timeline(spans_ms: list[tuple[int, int]], total_ms: int) -> list[float]:
    """A level timeline (peak per step) loud over ``spans_ms``."""
    out = [0.0] * (total_ms // STEP)
    for start, end in spans_ms:
        for i in range(start // STEP, end // STEP):
            out[i] = 0.3
    return out


def test_words_a_short_gap_apart_are_one_utterance() -> None:
    mic = np.asarray(timeline([(1000, 1300), (1500, 2000), (5000, 5400)], 6000)) > 0.015
    # 200 ms between "Stop," and "stop." is one utterance; 3 s later is the next
    assert utterance_onsets(mic, STEP) == [100, 500]
    assert utterance_onsets(np.zeros(50, dtype=bool), STEP) == []


def event(kind: str, t: float, rid: str, status: str | None = None) -> dict[str, Any]:
    return {"type": kind, "t": t, "response_id": rid, "status": status}


def test_each_cut_in_is_told_apart_by_what_the_story_was_doing() -> None:
    t0 = 500.0  # the page's levels began 500 ms into performance.now()
    # the request, then three cut-ins at 10 s, 20 s and 30 s of the level timeline
    mic = timeline([(0, 2000), (10_000, 11_000), (20_000, 21_000), (30_000, 31_000)], 40_000)
    agent = timeline([(3000, 10_300), (12_000, 18_000), (22_000, 33_000)], 40_000)
    events = [
        event("output_audio_buffer.started", t0 + 2900, "a"),
        event("output_audio_buffer.cleared", t0 + 10_900, "a"),  # cut short by the first
        event("response.done", t0 + 10_950, "a", "cancelled"),
        event("output_audio_buffer.started", t0 + 11_900, "b"),
        event("response.done", t0 + 17_000, "b", "completed"),
        event("output_audio_buffer.stopped", t0 + 18_100, "b"),  # over before the second
        event("output_audio_buffer.started", t0 + 21_900, "c"),
        event("response.done", t0 + 32_000, "c", "completed"),
        event("output_audio_buffer.stopped", t0 + 33_100, "c"),  # played on over the third
    ]
    levels = {"stepMs": STEP, "t0": t0, "loud": 0.015, "mic": mic, "agent": agent}
    first, second, third = cut_in_outcomes({"eventLog": events}, levels)

    assert first["response_id"] == "a" and first["outcome"] == "interrupted"
    assert first["story_status"] == "cancelled" and first["agent_audible_in_the_second_before"]
    assert first["cut_in_ms"] == 10_000 and first["story_ended_ms"] == 10_900

    assert second["response_id"] == "b" and second["outcome"] == "story_over"
    assert not second["agent_audible_in_the_second_before"]  # quiet since 18 s

    assert third["response_id"] == "c" and third["outcome"] == "spoken_over"
    assert third["story_status"] == "completed" and third["agent_audible_in_the_second_before"]


def test_a_story_ending_as_the_caller_cuts_in_was_not_theirs_to_stop() -> None:
    mic = timeline([(0, 1000), (5000, 6000)], 8000)
    agent = timeline([(1500, 5100)], 8000)
    events = [
        event("output_audio_buffer.started", 1400, "a"),
        event("output_audio_buffer.stopped", 5000 + REACTION_MS - 10, "a"),
    ]
    levels = {"stepMs": STEP, "t0": 0.0, "loud": 0.015, "mic": mic, "agent": agent}
    (only,) = cut_in_outcomes({"eventLog": events}, levels)
    assert only["outcome"] == "story_over"  # no hold could have reached the page by then


def test_a_cut_in_before_any_story_has_none_to_interrupt() -> None:
    mic = timeline([(0, 1000), (3000, 4000)], 6000)
    levels = {"stepMs": STEP, "t0": 0.0, "loud": 0.015, "mic": mic, "agent": [0.0] * 600}
    (only,) = cut_in_outcomes({"eventLog": []}, levels)
    assert only["outcome"] == "no_story" and only["response_id"] is None
