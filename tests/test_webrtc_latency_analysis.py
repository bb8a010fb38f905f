"""The browser benchmark's reading of its runs (``benchmarks/webrtc_latency_analysis.py``): the
page's path split at the server; the page against the WebSocket caller question by question; in a
barge-in run, where the caller starts to speak on the page's level timeline, and what became of
each cut-in: the story it cut short, a story already over (nothing to interrupt), or a story that
played on over it. Page data made by hand; no browser."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.webrtc_latency_analysis import (
    REACTION_MS,
    cut_in_outcomes,
    page_path,
    paired,
    utterance_onsets,
)

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


def test_the_pages_path_splits_at_the_reply_starting_on_the_data_channel() -> None:
    state = {
        "eventLog": [
            {"type": "output_audio_buffer.started", "t": 900.0, "response_id": "resp_old"},
            {"type": "response.created", "t": 1500.0, "response_id": "resp_a"},
            {"type": "output_audio_buffer.started", "t": 1700.0, "response_id": "resp_a"},
        ],
        "latencies": [
            {"ms": 120, "speechEnd": 780.0, "heardAt": 900.0, "response_id": "resp_old"},
            {"ms": 820, "speechEnd": 1000.0, "heardAt": 1820.0, "response_id": "resp_a"},
        ],
    }
    # the server's end of speech lies first_audio_sent (650 ms) before the event: at 1050
    assert page_path(state, "resp_a", 650.0) == {"uplink": 50.0, "downlink": 120.0}
    # no server figure, no event for it, or not heard on the page: nothing to split
    none = {"uplink": None, "downlink": None}
    assert page_path(state, "resp_a", None) == none
    assert page_path(state, "resp_b", 650.0) == none
    assert page_path({"eventLog": state["eventLog"], "latencies": []}, "resp_a", 650.0) == none


def test_the_page_and_the_websocket_caller_are_compared_question_by_question() -> None:
    def rtc(i: int, v2v: float | None, turn_end: float) -> dict[str, Any]:
        return {"index": i, "page_voice_to_voice_ms": v2v, "stages_ms": {"turn_end": turn_end}}

    def ws(i: int, v2v: float | None, turn_end: float, missed: bool = False) -> dict[str, Any]:
        stages = {"turn_end": turn_end}
        return {"index": i, "voice_to_voice_ms": v2v, "stages_ms": stages, "missed": missed}

    page = [rtc(0, 700, 400), rtc(1, 800, 450), rtc(2, None, 300), rtc(3, 900, 500)]
    websocket = [ws(1, 600, 400), ws(0, 650, 420), ws(2, 500, 300), ws(3, 0, 0, missed=True)]
    out = paired(page, websocket)
    # questions 0 and 1 only: the page did not hear reply 2, the WebSocket caller missed 3
    assert out["questions"] == 2
    assert out["voice_to_voice_ms"]["p50"] == 125.0  # (+50 and +200)
    assert out["stages_ms"]["turn_end"]["p50"] == 15.0  # (-20 and +50)
    assert out["stages_ms"]["asr_done"]["n"] == 0


def test_a_question_that_met_the_other_callers_reply_is_left_out() -> None:
    """Both callers share the server: a question asked while the other's reply is still being
    made meets a busier server, so its pair says nothing about the path."""

    def rtc(i: int) -> dict[str, Any]:
        return {"index": i, "page_voice_to_voice_ms": 700.0 + i, "stages_ms": {}}

    def ws(i: int, ran_into_next: bool = False, after_page: bool = True) -> dict[str, Any]:
        return {
            "index": i,
            "voice_to_voice_ms": 600.0,
            "stages_ms": {},
            "overlapped_page_question": ran_into_next,
            "after_page_reply": after_page,
        }

    page = [rtc(0), rtc(1), rtc(2), rtc(3)]
    # WebSocket turn 0 ran into the page's question 1; its question 3 came before the page's
    # reply 3 was over
    websocket = [ws(0, ran_into_next=True), ws(1), ws(2), ws(3, after_page=False)]
    out = paired(page, websocket)
    assert out["left_out"] == [1, 3]
    assert out["questions"] == 2
    assert out["voice_to_voice_ms"]["p50"] == 101.0  # +100 and +102
    assert out["outside_server_ms"]["n"] == 0  # no server stages in these records


def test_the_pages_own_path_is_told_apart_from_the_servers_stages() -> None:
    """The server answered the page 60 ms later (its reply began with a longer clause): of
    the +90 ms between the callers, 30 is the page's own path."""
    page = [{"index": 0, "page_voice_to_voice_ms": 900.0, "stages_ms": {"first_audio_sent": 840.0}}]
    websocket = [{"index": 0, "voice_to_voice_ms": 810.0, "stages_ms": {"first_audio_sent": 780.0}}]
    out = paired(page, websocket)
    assert out["voice_to_voice_ms"]["p50"] == 90.0
    assert out["stages_ms"]["first_audio_sent"]["p50"] == 60.0
    assert out["outside_server_ms"]["p50"] == 30.0
