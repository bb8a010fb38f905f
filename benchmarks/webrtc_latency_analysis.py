"""Reading a ``webrtc_latency`` run (``benchmarks/webrtc_latency.py``): the page's turns from
its state (its own voice-to-voice time, the server's stages, its path split at the server), the
page against the WebSocket caller question by question, and in a barge-in run what became of
each cut-in. Plain functions of the page's recorded state and the harness's records: no browser,
no server (``tests/test_webrtc_latency_analysis.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.harness.stats import STAGES, describe
from benchmarks.harness.timeline import wer

REACTION_MS = 300
"""A story that ends within this long of the cut-in ended before the server could stop it."""


def utterance_onsets(mic: np.ndarray, step_ms: int, gap_ms: int = 700) -> list[int]:
    """The steps where the caller starts to speak: loud after at least ``gap_ms`` of quiet."""
    loud = np.flatnonzero(mic)
    return [int(i) for k, i in enumerate(loud) if k == 0 or (i - loud[k - 1]) * step_ms > gap_ms]


def cut_in_outcomes(page: dict[str, Any], lv: dict[str, Any]) -> list[dict[str, Any]]:
    """What became of each cut-in (each utterance after the first, the story request), from the
    page's events and levels: ``interrupted`` (the story playing was cleared after it),
    ``story_over`` (the story had stopped before it, or within ``REACTION_MS``: nothing to
    interrupt), or ``spoken_over`` (the story played on to its end: a cut-in that did not
    interrupt)."""
    step, t0 = lv["stepMs"], lv["t0"]
    mic, agent = np.asarray(lv["mic"]) > lv["loud"], np.asarray(lv["agent"]) > lv["loud"]
    events = page["eventLog"]
    out = []
    for onset in utterance_onsets(mic, step)[1:]:
        at = t0 + onset * step
        began = [e for e in events if e["type"] == "output_audio_buffer.started" and e["t"] < at]
        rid = began[-1]["response_id"] if began else None
        end = next(
            (
                e
                for e in events
                if e["response_id"] == rid
                and e["type"] in ("output_audio_buffer.stopped", "output_audio_buffer.cleared")
            ),
            None,
        )
        if end is None or rid is None:
            outcome = "no_story"
        elif end["t"] >= at and end["type"].endswith("cleared"):
            outcome = "interrupted"
        else:
            outcome = "story_over" if end["t"] < at + REACTION_MS else "spoken_over"
        done: dict[str, Any] = next(
            (e for e in events if e["type"] == "response.done" and e["response_id"] == rid), {}
        )
        out.append(
            {
                "cut_in_ms": onset * step,
                "response_id": rid,
                "outcome": outcome,
                "story_status": done.get("status"),
                "agent_audible_in_the_second_before": bool(
                    agent[max(0, onset - 1000 // step) : onset].any()
                ),
                "story_ended_ms": None if end is None else round(end["t"] - t0),
            }
        )
    return out


def barge_in_summary(result: dict[str, Any], asked: int) -> dict[str, Any]:
    """Over the interruptions made while the agent was audibly speaking: from the first mic
    step with the caller's speech to the last step with the agent's voice (both at the page's
    level resolution, ``step_ms``)."""
    cuts = [
        a for a in result["interruptions"] if "problem" not in a and a["agent_speaking_at_cut_in"]
    ]
    outcomes = [c["outcome"] for c in result["cut_ins"]]
    return {
        "cut_ins": asked,
        "outcomes": {name: outcomes.count(name) for name in sorted(set(outcomes))},
        "interruptions": len(result["interruptions"]),
        "holds": result.get("holds"),
        "resumed_holds": result.get("resumed_holds"),
        "measured": len(cuts),
        "step_ms": cuts[0]["step_ms"] if cuts else None,
        "agent_audibly_stopped_after_cut_in_ms": describe(a["stop_after_cut_in_ms"] for a in cuts),
        "server_cleared_after_cut_in_ms": describe(a["cleared_after_cut_in_ms"] for a in cuts),
    }


def page_path(
    state: dict[str, Any], response_id: str, first_audio_sent: float | None
) -> dict[str, float | None]:
    """The page's own path for one reply, split at the server (ms, on the page's clock):
    ``downlink``: the reply's ``output_audio_buffer.started`` event (sent on the data channel
    as its first audio goes to the track) → its first sound on the page; ``uplink``: the
    caller's last speech on the page → the server's end of speech, placed on the page's clock
    ``first_audio_sent`` before that event. Both None when the event or the page's measurement
    is missing."""
    none: dict[str, float | None] = {"uplink": None, "downlink": None}
    started = next(
        (
            e["t"]
            for e in state.get("eventLog", [])
            if e["type"] == "output_audio_buffer.started" and e.get("response_id") == response_id
        ),
        None,
    )
    heard = next(
        (e for e in state.get("latencies", []) if e.get("response_id") == response_id), None
    )
    if started is None or heard is None or first_audio_sent is None:
        return none
    return {
        "uplink": round(started - first_audio_sent - heard["speechEnd"], 1),
        "downlink": round(heard["heardAt"] - started, 1),
    }


def webrtc_turns(texts: list[str], state: dict[str, Any]) -> list[dict[str, Any]]:
    """The page's turns, each with the question asked and heard when they can be paired."""
    users: list[str] = state["user"]
    same = len(users) == len(state["turns"])
    turns = []
    for i, t in enumerate(state["turns"]):
        metrics = t.get("metrics") or {}
        heard = users[i] if same else None
        asked = texts[i] if same and i < len(texts) else None
        path = page_path(state, t.get("response_id", ""), metrics.get("first_audio_sent"))
        turns.append(
            {
                "index": i,
                "question": asked,
                "user_transcript": heard,
                "wer": wer(asked, heard) if asked and heard is not None else None,
                "status": t["status"],
                "page_voice_to_voice_ms": t.get("pageLatencyMs"),
                "stages_ms": {k: metrics[k] for k in STAGES if k in metrics},
                "page_uplink_ms": path["uplink"],
                "page_downlink_ms": path["downlink"],
                "reply_transcript": t.get("transcript", ""),
            }
        )
    return turns


def webrtc_summary(turns: list[dict[str, Any]], asked: int) -> dict[str, Any]:
    """Latency over every reply that was heard: one cut short later by the next question (its
    answer outlasted the pause) still measured its first sound, so it counts."""
    heard = [t for t in turns if t["page_voice_to_voice_ms"] is not None]
    return {
        "questions": asked,
        "responses": len(turns),
        "completed": sum(t["status"] == "completed" for t in turns),
        "measured": len(heard),
        "cut_by_next_question": sum(t["status"] == "cancelled" for t in turns),
        "page_voice_to_voice_ms": describe(t["page_voice_to_voice_ms"] for t in heard),
        "stages_ms": {name: describe(t["stages_ms"].get(name) for t in heard) for name in STAGES},
        "page_uplink_ms": describe(t["page_uplink_ms"] for t in heard),
        "page_downlink_ms": describe(t["page_downlink_ms"] for t in heard),
    }


def paired(rtc: list[dict[str, Any]], ws: list[dict[str, Any]]) -> dict[str, Any]:
    """Page - WebSocket caller, question by question (the same question k asked by both): the
    voice-to-voice difference and each server stage's, so that a gap can be told apart into the
    page's own path (``outside_server_ms``) and the server answering it later (both
    conversations share the server)."""
    by_index = {r["index"]: r for r in ws if not r.get("missed")}
    overlapped = {r["index"] + 1 for r in ws if r.get("overlapped_page_question")}
    pairs = [
        (t, by_index[t["index"]])
        for t in rtc
        if t["page_voice_to_voice_ms"] is not None and t["index"] in by_index
    ]
    # a question that met the other caller's reply still being made is left out (the load
    # differs): the page's question k after WebSocket turn k - 1 ran into it, the WebSocket's
    # question k asked before the page's reply k was over
    loaded = [
        t["index"]
        for t, w in pairs
        if t["index"] in overlapped or not w.get("after_page_reply", True)
    ]
    pairs = [(t, w) for t, w in pairs if t["index"] not in loaded]

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    def outside(t: dict[str, Any], w: dict[str, Any]) -> float | None:
        """Page's path - the WebSocket caller's: each voice-to-voice time less the server's
        ``first_audio_sent`` (the replies' own content and the server's load drop out)."""
        page = diff(t["page_voice_to_voice_ms"], t["stages_ms"].get("first_audio_sent"))
        return diff(page, diff(w["voice_to_voice_ms"], w["stages_ms"].get("first_audio_sent")))

    return {
        "questions": len(pairs),
        "left_out": loaded,
        "voice_to_voice_ms": describe(
            diff(t["page_voice_to_voice_ms"], w["voice_to_voice_ms"]) for t, w in pairs
        ),
        "outside_server_ms": describe(outside(t, w) for t, w in pairs),
        "stages_ms": {
            name: describe(
                diff(t["stages_ms"].get(name), w["stages_ms"].get(name)) for t, w in pairs
            )
            for name in STAGES
        },
    }
