"""``voice bench --overlaps``: the scenario set and how backchannels and interruptions are counted,
on synthetic timelines; and the sweep's capacity and memory figures (the runs themselves are
``benchmarks/``'s)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.harness.bench import _level_memory, finish_config
from benchmarks.harness.cli import parser
from benchmarks.harness.overlaps import OVERLAP_SCENARIOS
from benchmarks.harness.report import format_turn
from benchmarks.harness.scenarios import parse_scenarios, select_turns
from benchmarks.harness.stats import capacity_at_p95, overlap_summary, summarize
from benchmarks.harness.table import summary_rows
from benchmarks.harness.timeline import (
    AUDIO,
    CLEAR,
    DONE,
    REALTIME,
    TWILIO,
    Ev,
    Spoken,
    TurnClock,
    analyze_turn,
)


def _audio(t: float, response: str | None = "r1") -> Ev:
    return Ev(t, AUDIO, response, True)


def _turn(events: list[Ev], protocol: str, backchannel: bool) -> dict[str, Any]:
    clock = TurnClock(0.0, [Spoken(0.1, 1.0)], barge_in=Spoken(2.0, 2.5))
    rec = analyze_turn(
        events,
        clock,
        text="Tell me a story.",
        pauses_ms=[],
        barge_in_text="Okay." if backchannel else "Wait, stop.",  # (the record's, below)
        backchannel=backchannel,
        protocol=protocol,
        timeout_s=30.0,
        gap_s=0.4,
        now=9.0,
    )
    kind = "backchannel" if backchannel else "barge-in"
    said = "Okay." if backchannel else "Wait, stop."
    return {**rec, "turn": "t", "kind": kind, "text": "Tell me a story.", "barge_in_text": said}


def test_the_set_has_backchannels_and_interruptions_in_every_voice() -> None:
    turns = [t for s in OVERLAP_SCENARIOS for t in s.turns]
    assert all(t.barge_in is not None for t in turns)
    kinds = [t.kind for t in turns]
    assert kinds.count("backchannel") == kinds.count("barge-in") == 28
    first = select_turns(OVERLAP_SCENARIOS, 28)
    assert len({s.voice for s in first}) == 4  # --turns 28 hears every voice
    assert parser().parse_args(["--overlaps"]).overlaps


def test_a_scenario_file_may_mark_a_backchannel() -> None:
    (scenario,) = parse_scenarios(
        [
            {
                "turns": [
                    {
                        "segments": ["Tell me about Rome."],
                        "barge_in": {"text": "Mm-hmm.", "backchannel": True},
                    },
                    {"segments": ["And Paris?"], "barge_in": {"text": "Stop."}},
                ]
            }
        ]
    )
    assert [t.kind for t in scenario.turns] == ["backchannel", "barge-in"]
    assert scenario.describe()["turns"][0]["barge_in"]["backchannel"] is True


@pytest.mark.parametrize("protocol", [REALTIME, TWILIO])
def test_backchannels_and_interruptions_are_counted_apart(protocol: str) -> None:
    reply = [_audio(1.5 + i * 0.02) for i in range(50)]  # 1.50 .. 2.48, the caller at 2.0
    held_then_resumed = [
        *reply[:27],  # held at 2.02 …
        *[_audio(3.0 + i * 0.02) for i in range(50)],  # … and on again at 3.0
        Ev(4.0, DONE, "r1", status="completed"),
    ]
    cut = [*reply[:27], Ev(2.6, CLEAR), Ev(2.61, DONE, "r1", status="cancelled")]
    went_on = _turn(held_then_resumed, protocol, backchannel=True)
    stopped = _turn(cut, protocol, backchannel=False)
    cut_backchannel = _turn(cut, protocol, backchannel=True)
    assert went_on["barge_in"]["cut_off"] is False and stopped["barge_in"]["cut_off"] is True
    summary = overlap_summary([went_on, cut_backchannel, stopped])
    assert summary["backchannels"] == 2 and summary["backchannels_interrupted"] == 1
    assert summary["backchannel_interrupted_rate"] == 0.5
    assert summary["interruptions"] == summary["interruptions_stopped"] == 1
    assert summary["stop_ms"]["p95"] == pytest.approx(20.0)  # the last chunk before the hold
    assert "backchannel: it went on" in format_turn(went_on)
    assert "CUT THE REPLY OFF" in format_turn(cut_backchannel)
    whole = summarize([went_on, stopped], protocol)
    assert whole["overlaps"]["interruption_stopped_rate"] == 1.0
    labels = [label for label, *_ in summary_rows([{"summary": whole}])]
    assert "backchannels that interrupted (rate)" in labels


def test_capacity_is_the_highest_level_within_the_p95_target_without_a_missed_turn() -> None:
    p95 = {1: 800.0, 2: 1100.0, 4: 1150.0, 8: 2600.0}
    assert capacity_at_p95(p95, {1: 0, 2: 0, 4: 1, 8: 0}, cores=2) == {
        "p95_target_ms": 1200.0,
        "max_level": 2,  # 4 missed a turn, 8 is past the target
        "sessions_per_core": 1.0,
    }
    assert capacity_at_p95({1: 1300.0}, {1: 0}, cores=2)["max_level"] is None
    assert capacity_at_p95(p95, {}, cores=2, target_ms=3000)["sessions_per_core"] == 4.0


def test_each_level_reports_the_memory_its_sessions_added() -> None:
    assert _level_memory(600.0, 700.0, 4) == {"at_rest": 600.0, "peak": 700.0, "per_session": 25.0}
    assert _level_memory(None, 700.0, 4)["per_session"] is None

    def level(n: int, p95: float, missed: int, per_session: float) -> dict[str, Any]:
        summary = summarize([], REALTIME)
        summary["voice_to_voice_ms"] = {"p50": p95 / 2, "p95": p95}
        summary["missed"] = missed
        return {"concurrency": n, "summary": summary, "rss_mb": {"per_session": per_session}}

    result: dict[str, Any] = {"levels": [level(1, 700, 0, 30.0), level(4, 1900, 0, 12.5)]}
    finish_config(result, cores=2)
    sweep = result["sweep"]
    assert sweep["rss_mb_per_session"] == {"1": 30.0, "4": 12.5}
    assert sweep["missed"] == {"1": 0, "4": 0}
    assert sweep["at_p95_target"]["max_level"] == 1
