"""``voice bench`` (benchmarks/harness): the pure parts on synthetic data (statistics, latency
marks on synthetic audio, false interruptions and barge-ins on synthetic timelines, ratios, the
HTML report), the Twilio caller against a tiny fake agent, and one short real run through the
Realtime endpoint of the in-process server."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from benchmarks.harness import cli as bench_cli
from benchmarks.harness.audio import LOUD, chunked, first_loud, is_loud, last_loud, trim
from benchmarks.harness.bench import BenchOptions, benchmark, comparisons, finish_config
from benchmarks.harness.clients import (
    Microphone,
    RealtimeCall,
    SdkRealtimeCall,
    open_sdk_call,
    sdk_endpoint,
    with_query,
)
from benchmarks.harness.html import nice_ticks, render_html, stage_segments
from benchmarks.harness.report import format_turn, summary_text, write_json, write_outputs
from benchmarks.harness.runner import Timing, run_conversation
from benchmarks.harness.scenarios import (
    DEFAULT_SCENARIOS,
    QUESTIONS,
    BargeIn,
    RenderedScenario,
    RenderedTurn,
    Scenario,
    Segment,
    TurnScript,
    parse_scenarios,
    questions,
    select_turns,
)
from benchmarks.harness.server import (
    REFERENCE,
    default_configs,
    parse_config,
    server_keys,
    unknown_keys,
)
from benchmarks.harness.stats import (
    compare_rows,
    corpus_wer,
    describe,
    flatten,
    ratios,
    sessions_per_core,
    summarize,
)
from benchmarks.harness.table import table
from benchmarks.harness.timeline import (
    AUDIO,
    CLEAR,
    CREATED,
    DONE,
    METRICS,
    REALTIME,
    TRANSCRIPT,
    TWILIO,
    Ev,
    Spoken,
    TurnClock,
    analyze_turn,
    false_interruptions,
    first_loud_audio,
    realtime_barge_in,
    reply_stalls,
    twilio_barge_in,
    wer,
)
from transports import g711
from voice import cli as voice_cli

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- statistics


def test_describe_percentiles_and_empty() -> None:
    stats = describe([float(v) for v in range(1, 101)] + [None])
    assert stats == {"n": 100, "p50": 50.5, "p95": 95.0, "p99": 99.0, "max": 100.0, "mean": 50.5}
    assert describe([]) == {
        "n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None
    }  # fmt: skip
    assert describe([7.0])["p99"] == 7.0


def test_corpus_wer_counts_words_over_all_utterances() -> None:
    pairs = [("What is the capital of France?", "what is the capital of france"), ("a b c d", "")]
    assert corpus_wer(pairs) == pytest.approx(4 / 10)
    assert corpus_wer([]) is None
    assert wer("Hello, there!", "hello there") == 0.0
    assert wer("hello there", "") == 1.0


def test_sessions_per_core_is_the_highest_level_within_1_5x_of_one_session() -> None:
    sweep = sessions_per_core({1: 1000.0, 2: 1200.0, 4: 1490.0, 8: 2600.0}, cores=2)
    assert sweep["max_level"] == 4 and sweep["sessions_per_core"] == 2.0
    assert sessions_per_core({1: 1000.0, 4: 1600.0}, cores=2)["max_level"] == 1
    # a level without answers does not count; no level 1: the lowest level is the baseline
    assert sessions_per_core({2: 800.0, 4: None, 6: 1100.0}, cores=4)["max_level"] == 6
    assert sessions_per_core({}, cores=2)["sessions_per_core"] is None


def test_ratios_and_compare() -> None:
    a = {"voice_to_voice_ms": {"n": 3, "p50": 1000.0}, "wer": 0.1, "x": None, "ok": True}
    b = {"voice_to_voice_ms": {"n": 3, "p50": 2500.0}, "wer": 0.0, "x": 3.0}
    assert flatten(a) == {"voice_to_voice_ms.p50": 1000.0, "wer": 0.1}
    assert ratios(a, b) == {"voice_to_voice_ms.p50": 2.5, "wer": 0.0, "x": None}
    report_a = {"configs": [{"name": "optimized", "summary": a}, {"name": "ref", "summary": b}]}
    report_b = {"configs": [{"name": "optimized", "summary": b}]}
    assert ("optimized.voice_to_voice_ms.p50", 1000.0, 2500.0, 2.5) in compare_rows(
        report_a, report_b
    )
    lone = compare_rows(
        {"configs": [{"name": "x", "summary": a}]}, {"configs": [{"name": "y", "summary": b}]}
    )
    assert lone[0][0].startswith("x|y.")


def test_compare_command_prints_every_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(
        json.dumps({"configs": [{"name": "c", "summary": {"voice_to_voice_ms": {"p50": 800}}}]})
    )
    b.write_text(
        json.dumps({"configs": [{"name": "c", "summary": {"voice_to_voice_ms": {"p50": 1200}}}]})
    )
    assert bench_cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "c.voice_to_voice_ms.p50" in out and "1.50x" in out
    # the same through `voice bench`, which loads the harness by name only when it runs
    assert voice_cli.main(["bench", "compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out == out


# ---------------------------------------------------------------- the import graph


def imports_of(path: Path, package: str) -> set[str]:
    """The absolute names a module imports (relative imports resolved within ``package``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = f"{package}.{node.module}" if node.level else node.module
            names.add(base or package)
    return names


def test_the_harness_has_no_import_circle_and_voice_does_not_import_benchmarks() -> None:
    harness = ROOT / "benchmarks" / "harness"
    graph = {
        f"benchmarks.harness.{f.stem}": {
            n for n in imports_of(f, "benchmarks.harness") if n.startswith("benchmarks.harness.")
        }
        for f in harness.glob("*.py")
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for dep in graph.get(module, ()):
            visit(dep, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())
    for f in (ROOT / "voice").rglob("*.py"):
        assert not any(n.split(".")[0] == "benchmarks" for n in imports_of(f, "voice")), f


# ---------------------------------------------------------------- audio and the microphone


def tone(seconds: float, rate: int, amplitude: int = 8000, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_loudness_marks_on_synthetic_audio() -> None:
    rate = 24_000
    audio = np.concatenate([np.zeros(1000, np.int16), tone(0.1, rate), np.full(500, 100, np.int16)])
    first, last = first_loud(audio), last_loud(audio)
    assert first is not None and last is not None
    assert 1000 <= first < 1100 and 1000 + 2300 <= last < 1000 + 2400
    assert not is_loud(np.full(480, LOUD, np.int16)) and is_loud(np.full(480, LOUD + 1, np.int16))
    trimmed = trim(audio, rate)
    assert len(trimmed) < len(audio) and is_loud(trimmed[:500])
    chunks = chunked(np.ones(1000, np.int16), 480)
    assert [len(c) for c in chunks] == [480, 480, 480] and chunks[-1][40:].max() == 0


async def test_microphone_marks_the_chunks_with_the_first_and_last_audible_sample() -> None:
    sent: list[tuple[float, np.ndarray]] = []

    async def send(chunk: np.ndarray) -> None:
        sent.append((time.perf_counter(), chunk.copy()))

    mic = Microphone(send, 8000)  # 160 samples a chunk
    speech = np.concatenate([np.zeros(400, np.int16), tone(0.1, 8000), np.zeros(100, np.int16)])
    runner = asyncio.create_task(mic.run())
    try:
        first, second = mic.say([speech, tone(0.05, 8000)], pauses_ms=[100])
        async with asyncio.timeout(5):
            end = await second.end
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    loud_chunks = [t for t, c in sent if is_loud(c)]
    # marked when the chunk holding the first (last) audible sample has been sent
    assert first.onset.result() == pytest.approx(loud_chunks[0], abs=0.003)
    assert first.end.result() < second.onset.result() <= end
    assert end == pytest.approx(loud_chunks[-1], abs=0.003)
    gap = second.onset.result() - first.end.result()
    assert 0.1 <= gap < 0.25, gap  # the 100 ms pause (+ the rest of the first chunk), in real time
    # real-time pacing: 20 ms apart on average
    span = sent[-1][0] - sent[0][0]
    assert span == pytest.approx((len(sent) - 1) * 0.02, abs=0.05)


def test_realtime_events_become_a_timeline() -> None:
    call = RealtimeCall("ws://unused")
    silent = base64.b64encode(np.zeros(480, "<i2").tobytes()).decode()
    loud = base64.b64encode(tone(0.02, 24_000).astype("<i2").tobytes()).decode()
    call.handle({"type": "response.created", "response": {"id": "r1"}}, 1.0)
    call.handle({"type": "response.output_audio.delta", "response_id": "r1", "delta": silent}, 1.1)
    call.handle({"type": "response.output_audio.delta", "response_id": "r1", "delta": loud}, 1.2)
    call.handle(
        {"type": "response.done", "response": {"id": "r1", "status": "cancelled",
         "status_details": {"type": "cancelled", "reason": "turn_detected"}}}, 1.3,
    )  # fmt: skip
    call.handle(
        {"type": "x.voice.turn.metrics", "response_id": "r1",
         "metrics_ms": {"turn_end": 500, "first_audio_sent": 900.5, "overhead": 3, "x": None}}, 1.4,
    )  # fmt: skip
    kinds = [(e.kind, e.loud) for e in call.events]
    assert kinds == [
        (CREATED, False),
        (AUDIO, False),
        (AUDIO, True),
        (DONE, False),
        (METRICS, False),
    ]
    assert first_loud_audio(call.events, after=1.0) is call.events[2]
    assert call.events[3].reason == "turn_detected"
    assert call.events[4].metrics == {"turn_end": 500.0, "first_audio_sent": 900.5, "overhead": 3.0}


# ---------------------------------------------------------------- timelines


def audio(t: float, response: str | None = "r1", loud: bool = True) -> Ev:
    return Ev(t, AUDIO, response, loud)


def test_false_interruptions_count_replies_started_during_a_pause() -> None:
    segments = [Spoken(0.0, 1.0), Spoken(1.5, 2.5), Spoken(3.0, 4.0)]
    events = [
        Ev(1.8, CREATED, "early"),  # the server answered the first pause while the caller went on
        Ev(2.0, DONE, "early", status="cancelled"),
        audio(3.2, "other", loud=False),  # inaudible audio is no interruption
        Ev(4.6, CREATED, "reply"),  # the real reply, after the turn
        audio(4.9, "reply"),
    ]
    assert false_interruptions(events, segments) == [True, False]
    assert false_interruptions([*events, audio(3.5, "x")], segments) == [True, True]
    assert false_interruptions([], segments[:1]) == []


def test_realtime_barge_in_is_measured_to_the_last_audio_of_the_interrupted_reply() -> None:
    events = [audio(1.0 + i * 0.02) for i in range(40)]  # 1.00 .. 1.78
    events += [Ev(1.80, DONE, "r1", status="cancelled", reason="turn_detected")]
    events += [audio(3.0, "r2")]
    result = realtime_barge_in(events, onset=1.5)
    assert result.playing and result.interrupted and result.response == "r1"
    assert result.latency_ms(1.5) == pytest.approx(280.0)
    # a reply that had ended before the interruption
    done_early = [*events[:10], Ev(1.2, DONE, "r1", status="completed")]
    ended = realtime_barge_in(done_early, onset=1.5)
    assert not ended.playing and ended.interrupted is False and ended.latency_ms(1.5) is None
    # completed on its own although it was still playing: not a barge-in
    finished = realtime_barge_in([*events[:-2], Ev(1.8, DONE, "r1", status="completed")], 1.5)
    assert finished.playing and finished.interrupted is False and finished.latency_ms(1.5) is None
    assert result.quiet_ms(1.5) is None and ended.quiet_ms(1.5) is None


def test_a_barge_in_into_a_pause_of_the_reply_is_not_timed_but_counted() -> None:
    """WebRTC sends silence between sentences: when the caller cut into one and nothing of the
    reply sounded after, when it stopped is unknown; the record says how long it had been quiet."""
    spoken = [Ev(1.0 + i * 0.02, AUDIO, "r1", True) for i in range(10)]  # loud until 1.18
    events = [*spoken, Ev(1.6, DONE, "r1", status="cancelled", reason="turn_detected")]
    result = realtime_barge_in(events, onset=1.4)
    assert result.playing and result.interrupted
    assert result.latency_ms(1.4) is None and result.quiet_ms(1.4) == pytest.approx(220.0)
    same_slot = realtime_barge_in(events, onset=1.19)  # its last sound shared the caller's packet
    assert same_slot.latency_ms(1.19) == 0.0 and same_slot.quiet_ms(1.19) is None


def test_reply_stalls_are_pieces_that_came_after_the_audio_before_them_ran_out() -> None:
    def piece(t: float, response: str = "r1") -> Ev:
        return Ev(t, AUDIO, response, True, seconds=0.1)

    steady = [piece(1.0 + i * 0.1) for i in range(10)]  # plays 1.0 .. 2.0, each in time
    assert reply_stalls(steady, "r1", until=9.0) == []
    jitter = [piece(1.0), piece(1.15), piece(1.2)]  # 50 ms late: within what a player absorbs
    assert reply_stalls(jitter, "r1", until=9.0) == []
    late = [piece(1.0), piece(1.1), piece(1.5), piece(1.6), piece(2.0)]  # ran out at 1.2 and 1.7
    assert reply_stalls(late, "r1", until=9.0) == pytest.approx([0.3, 0.3])
    assert reply_stalls(late, "r1", until=1.9) == pytest.approx([0.3])  # the caller spoke at 1.9
    assert reply_stalls([*late, piece(5.0, "r2")], "r2", until=9.0) == []  # per reply
    unknown = [Ev(1.0, AUDIO, "r1", True), Ev(3.0, AUDIO, "r1", True)]  # (WebRTC: no lengths)
    assert reply_stalls(unknown, "r1", until=9.0) == []


def test_twilio_barge_in_uses_clear_or_a_gap() -> None:
    media = [audio(1.0 + i * 0.02, None) for i in range(30)]  # 1.00 .. 1.58
    cleared = [*media, Ev(1.6, CLEAR), audio(2.5, None)]
    result = twilio_barge_in(cleared, onset=1.3, gap_s=0.4, now=3.0)
    assert result.interrupted and result.clear == 1.6
    assert result.latency_ms(1.3) == pytest.approx(280.0)
    gap = twilio_barge_in([*media, audio(2.5, None)], onset=1.3, gap_s=0.4, now=3.0)
    assert gap.interrupted is None and gap.stop == pytest.approx(1.58)
    assert twilio_barge_in(media, onset=1.3, gap_s=0.4, now=1.7).stop is None  # still going?
    assert not twilio_barge_in(media, onset=2.5, gap_s=0.4, now=3.0).playing
    # held at the caller's first window: the last chunk and the onset shared a packet slot
    at_once = twilio_barge_in([*media, audio(2.5, None)], onset=1.59, gap_s=0.4, now=3.0)
    assert at_once.stop == pytest.approx(1.58) and at_once.latency_ms(1.59) == 0.0
    paused = twilio_barge_in([*media, audio(2.5, None)], onset=1.65, gap_s=0.4, now=3.0)
    assert paused.latency_ms(1.65) is None  # the reply had paused before: unknown


def test_analyze_turn_on_a_synthetic_timeline() -> None:
    clock = TurnClock(0.0, [Spoken(0.1, 1.0), Spoken(1.5, 2.0)], barge_in=Spoken(3.2, 3.8))
    events = [
        Ev(1.2, TRANSCRIPT, text="I would like to book a table"),
        Ev(1.25, CREATED, "early"),
        Ev(1.6, DONE, "early", status="cancelled"),
        Ev(2.6, TRANSCRIPT, text="for two people tonight."),
        Ev(2.65, CREATED, "r1"),
        audio(2.7, "r1", loud=False),
        *[audio(2.72 + i * 0.02, "r1") for i in range(40)],  # until 3.50
        Ev(3.52, DONE, "r1", status="cancelled", reason="turn_detected"),
        Ev(3.53, METRICS, "r1", metrics={"speech_end": 0.0, "turn_end": 500.0,
                                         "first_audio_sent": 650.0, "overhead": 4.0}),
        Ev(4.3, TRANSCRIPT, text="Stop, please."),
        audio(5.0, "r2"),
    ]  # fmt: skip
    rec = analyze_turn(
        events,
        clock,
        text="I would like to book a table for two people tonight.",
        pauses_ms=[500],
        barge_in_text="Stop please",
        protocol=REALTIME,
        timeout_s=30.0,
        gap_s=0.4,
        now=6.0,
    )
    assert not rec["missed"] and rec["voice_to_voice_ms"] == pytest.approx(720.0)
    assert rec["pauses"] == [{"pause_ms": 500, "false_interruption": True}]
    assert rec["wer"] == 0.0 and rec["user_transcript"].endswith("tonight.")
    assert rec["stages_ms"] == {"speech_end": 0.0, "turn_end": 500.0, "first_audio_sent": 650.0}
    assert rec["overhead_ms"] == 4.0 and rec["transport_ms"] == pytest.approx(70.0)
    barge = rec["barge_in"]
    assert barge["latency_ms"] == pytest.approx(300.0) and barge["status"] == "cancelled"
    assert barge["reply_v2v_ms"] == pytest.approx(1200.0) and barge["wer"] == 0.0
    assert "barge-in 300 ms cancelled" in format_turn({**rec, "turn": "t", "kind": "barge-in"})
    missed = analyze_turn(
        events[:4], clock, text="x", pauses_ms=[500], barge_in_text=None,
        protocol=TWILIO, timeout_s=30.0, gap_s=0.4, now=40.0,
    )  # fmt: skip
    assert missed["missed"] and missed["voice_to_voice_ms"] is None and missed["wer"] is None


# ---------------------------------------------------------------- scenarios and configurations


def test_default_scenarios_and_selection() -> None:
    turns = [t for s in DEFAULT_SCENARIOS for t in s.turns]
    assert 8 <= len(turns) <= 12
    assert {t.kind for t in turns} == {"simple", "pause", "barge-in"}
    assert all(p == 500 for t in turns for p in t.pauses_ms)
    voices = {s.voice for s in DEFAULT_SCENARIOS}
    assert len(voices) >= 3
    first4 = [t.kind for s in select_turns(DEFAULT_SCENARIOS, 4) for t in s.turns]
    assert first4 == ["simple", "pause", "barge-in", "simple"]
    many = select_turns(DEFAULT_SCENARIOS, len(turns) + 2)
    assert sum(len(s.turns) for s in many) == len(turns) + 2 and many[-1].name.endswith("#2")


def test_the_questions_preset_cycles_through_simple_turns() -> None:
    scenario = questions(len(QUESTIONS) + 2)
    assert [t.kind for t in scenario.turns] == ["simple"] * (len(QUESTIONS) + 2)
    assert scenario.turns[0].text == QUESTIONS[0] == scenario.turns[len(QUESTIONS)].text
    assert scenario.voice == "en-us+m3" and len({t.name for t in scenario.turns}) == 14


def test_scenario_file_format(tmp_path: Path) -> None:
    data = {
        "scenarios": [
            {
                "name": "booking",
                "voice": "en-us+f3",
                "turns": [
                    {"segments": [{"wav": "a.wav", "text": "I would like", "pause_ms": 500},
                                  {"wav": "b.wav", "text": "a table"}]},
                    {"segments": [{"text": "Tell me a story."}],
                     "barge_in": {"after_ms": 800, "wav": "stop.wav", "text": "Stop."}},
                ],
            }
        ]
    }  # fmt: skip
    (scenario,) = parse_scenarios(data, tmp_path)
    first, second = scenario.turns
    assert first.kind == "pause" and first.pauses_ms == [500] and first.segments[0].wav == "a.wav"
    assert second.barge_in == BargeIn(800, "Stop.", "stop.wav", None)
    with pytest.raises(ValueError, match="turns"):
        parse_scenarios({"scenarios": [{"name": "x"}]})


def test_named_configurations() -> None:
    cfg = parse_config("fast=vad.silence_duration_ms=300,pipeline.early_asr=true")
    assert cfg.name == "fast"
    assert cfg.settings == {"vad.silence_duration_ms": "300", "pipeline.early_asr": "true"}
    assert parse_config("defaults=").settings == {}
    with pytest.raises(ValueError):
        parse_config("bad=nodots")
    optimized, reference = default_configs({*REFERENCE, "vad.eot_adaptive"})
    assert optimized.settings == {}
    assert reference.settings == {**REFERENCE, "vad.eot_adaptive": "false"}
    assert "vad.pause_on_onset" in reference.skipped
    _, full = default_configs(server_keys())
    assert not full.skipped  # this server knows every switch
    assert unknown_keys([cfg], {"vad.silence_duration_ms"}) == ["pipeline.early_asr"]


# ---------------------------------------------------------------- the report


def fake_turn(v2v: float, caller: int = 1, level: int = 1, **extra: Any) -> dict[str, Any]:
    rec = {
        "config": "c", "concurrency": level, "caller": caller, "scenario": "s", "index": 0,
        "turn": "t", "kind": "simple", "text": "hello there", "barge_in_text": None,
        "speech_s": 1.0, "cut": False, "missed": False, "voice_to_voice_ms": v2v,
        "reply_status": "completed", "pauses": [], "false_interruptions": 0,
        "stages_ms": {"speech_end": 0.0, "turn_end": 500.0, "asr_done": 450.0,
                      "llm_first_token": 700.0, "tts_first_audio": 800.0,
                      "first_audio_sent": 810.0},
        "overhead_ms": 5.0, "transport_ms": v2v - 810.0, "user_transcript": "hello there",
        "wer": 0.0, "reply_transcript": "hi", "barge_in": None, "errors": [],
    }  # fmt: skip
    rec.update(extra)
    return rec


def fake_config(name: str, scale: float) -> dict[str, Any]:
    barge = {
        "reply_playing": True, "latency_ms": 250.0 * scale, "interrupted": True,
        "status": "cancelled", "reason": "turn_detected", "clear_ms": None,
        "reply_v2v_ms": 1000.0, "transcript": "stop", "wer": 0.0,
    }  # fmt: skip
    pauses = [{"pause_ms": 500, "false_interruption": scale > 1}]
    turns = [fake_turn(1000.0 * scale), fake_turn(1100.0 * scale, kind="pause", pauses=pauses)]
    turns.append(fake_turn(1200.0 * scale, kind="barge-in", barge_in=barge, barge_in_text="stop"))
    turns += [fake_turn(1300.0 * scale, caller=c, level=4) for c in (1, 2, 3, 4)]
    result = {
        "name": name, "settings": {}, "skipped_reference_keys": [], "error": None,
        "server": {"rss_mb": {"after_warm_up": 600.0, "peak": 650.0 * scale, "after_run": 640.0}},
        "levels": [
            {"concurrency": lv, "wall_s": 1.0, "time_up": False,
             "summary": summarize([t for t in turns if t["concurrency"] == lv], REALTIME)}
            for lv in (1, 4)
        ],
        "turns": turns,
    }  # fmt: skip
    finish_config(result, cores=2)
    return result


def fake_report() -> dict[str, Any]:
    configs = [fake_config("optimized", 1.0), fake_config("reference", 2.0)]
    return {
        "tool": "voice bench", "format": 1, "started_utc": "2026-01-01T00:00:00+00:00",
        "wall_s": 1.0, "protocol": REALTIME, "url": None,
        "machine": {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "memory_gb": 4,
                    "platform": "test", "python": "3.11"},
        "options": {}, "scenarios": [], "configs": configs, "comparisons": comparisons(configs),
    }  # fmt: skip


def test_summary_of_a_configuration() -> None:
    config = fake_config("optimized", 1.0)
    s = config["summary"]
    assert s["voice_to_voice_ms"]["p50"] == 1100.0 and s["concurrency"] == 1
    assert s["barge_in_ms"]["p50"] == 250.0 and s["barge_in"]["cancelled"] == 1
    assert s["false_interruptions"] == {"count": 0, "pauses": 1, "rate": 0.0}
    assert s["stages_ms"]["llm_first_token"]["p50"] == 700.0 and s["wer"] == 0.0
    assert s["server_rss_mb"]["peak"] == 650.0
    # level 4's p50 (1300) is within 1.5x of level 1's (1100): 4 sessions on 2 cores
    assert config["sweep"]["max_level"] == 4 and s["sessions_per_core"] == 2.0


def test_report_table_shows_both_configurations_and_their_ratio() -> None:
    report = fake_report()
    header, rows = table(report)
    assert header == ["metric", "optimized", "reference", "reference / optimized"]
    v2v = next(r for r in rows if r[0] == "voice-to-voice p50 (ms)")
    assert v2v == ["voice-to-voice p50 (ms)", "1100", "2200", "2.00x"]
    assert report["comparisons"][0]["ratios"]["voice_to_voice_ms.p50"] == 2.0
    assert "reference / optimized" in summary_text(report)


def test_html_report_is_self_contained_with_the_svg_charts(tmp_path: Path) -> None:
    report = fake_report()
    page = render_html(report)
    assert page.count("<svg") == 4  # CDF, one stage chart per configuration, concurrency
    for css in ('class="cdf"', 'class="stages"', 'class="concurrency"'):
        assert css in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "reference / optimized" in page and "2.00x" in page
    assert page.count("<polyline") >= 4 and "<rect" in page
    json_path, html_path = write_outputs(report, tmp_path)
    assert json.loads(json_path.read_text())["configs"][1]["name"] == "reference"
    assert (tmp_path / "bench-latest.json").read_text() == json_path.read_text()
    assert html_path.read_text() == page
    named, _ = write_outputs(report, tmp_path, name="realtime_latency")
    assert named.name.startswith("realtime_latency-2") and named.suffix == ".json"
    assert (tmp_path / "realtime_latency-latest.json").read_text() == named.read_text()
    assert named.with_suffix(".html").read_text() == page
    other = write_json({"x": 1}, "webrtc_latency", tmp_path / "sub")
    assert json.loads((tmp_path / "sub" / "webrtc_latency-latest.json").read_text()) == {"x": 1}
    assert other.parent == tmp_path / "sub" and not other.with_suffix(".html").exists()


def test_stage_segments_and_ticks() -> None:
    segs = stage_segments(fake_turn(1000.0))
    assert segs[0] == ("turn_end", 0.0, 500.0)
    assert segs[1] == ("asr_done", 500.0, 500.0)  # early ASR: before the turn end, never backwards
    assert segs[-1] == ("client", 810.0, 1000.0)
    assert nice_ticks(0, 2200) == [0, 500, 1000, 1500, 2000, 2500]
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


# ---------------------------------------------------------------- Realtime callers ask for x.voice events


def test_realtime_urls_ask_for_the_extension_events() -> None:
    assert with_query("ws://h:1/v1/realtime", {"x_voice_events": "1"}) == (
        "ws://h:1/v1/realtime?x_voice_events=1"
    )
    assert with_query("ws://h/v1/realtime?a=b&x_voice_events=0", {"x_voice_events": "1"}) == (
        "ws://h/v1/realtime?x_voice_events=0&a=b"
    )  # what the caller asked for explicitly stays
    assert RealtimeCall("ws://h:1/v1/realtime").url == "ws://h:1/v1/realtime?x_voice_events=1"
    assert sdk_endpoint("wss://h:1/v1/realtime?x_voice_events=1") == (
        "https://h:1/v1",
        {"x_voice_events": "1"},
    )
    assert isinstance(open_sdk_call(REALTIME, "ws://h/v1/realtime"), SdkRealtimeCall)


def fake_realtime_agent(paths: list[str]) -> Callable[[ServerConnection], Any]:
    """Records the path each client asked for; after its first audio chunk, a metrics event
    (only when asked for, as the server does)."""

    async def agent(ws: ServerConnection) -> None:
        assert ws.request is not None
        paths.append(ws.request.path)
        await ws.send(json.dumps({"type": "session.created", "session": {"id": "s1"}}))
        sent = "x_voice_events=1" not in ws.request.path
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                if sent or json.loads(raw)["type"] != "input_audio_buffer.append":
                    continue
                metrics = {"turn_end": 250, "first_audio_sent": 600}
                message = {"type": "x.voice.turn.metrics", "response_id": "r1"}
                await ws.send(json.dumps({**message, "metrics_ms": metrics}))
                sent = True

    return agent


@pytest.mark.parametrize("call_type", [RealtimeCall, SdkRealtimeCall])
async def test_realtime_callers_connect_with_x_voice_events(call_type: type[RealtimeCall]) -> None:
    paths: list[str] = []
    async with serve(fake_realtime_agent(paths), "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with call_type(f"ws://127.0.0.1:{port}/v1/realtime") as call:
            assert call.session == {"id": "s1"}
            found = await call.until(
                lambda ev: ev if ev and ev.kind == METRICS else None, 0, time.perf_counter() + 5
            )
    assert found is not None and found.response == "r1"
    assert found.metrics == {"turn_end": 250.0, "first_audio_sent": 600.0}
    (path,) = paths
    assert path.startswith("/v1/realtime?") and "x_voice_events=1" in path.split("?")[1].split("&")


# ---------------------------------------------------------------- the Twilio caller, fake agent


async def fake_twilio_agent(ws: ServerConnection) -> None:
    """Answers each utterance (300 ms of silence after speech) with 0.6 s of tone in real time
    and a mark; speech during a reply cuts it off with a clear, like a voice agent."""
    sid = None
    reply: asyncio.Task[None] | None = None
    heard = loud_run = quiet_run = 0

    async def speak() -> None:
        for _ in range(30):
            payload = base64.b64encode(g711.ulaw_encode(tone(0.02, 8000))).decode()
            await ws.send(
                json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
            )
            await asyncio.sleep(0.02)
        await ws.send(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "r"}}))

    with contextlib.suppress(websockets.ConnectionClosed):
        async for raw in ws:
            msg = json.loads(raw)
            if msg["event"] == "start":
                assert msg["start"]["mediaFormat"] == {
                    "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1
                }  # fmt: skip
                sid = msg["streamSid"]
            if msg["event"] != "media":
                continue
            loud = is_loud(g711.ulaw_decode(base64.b64decode(msg["media"]["payload"])))
            loud_run, quiet_run = (loud_run + 1, 0) if loud else (0, quiet_run + 1)
            heard += loud
            speaking = reply is not None and not reply.done()
            if speaking and loud_run >= 5:
                assert reply is not None
                reply.cancel()
                await ws.send(json.dumps({"event": "clear", "streamSid": sid}))
            elif heard and quiet_run >= 15 and not speaking:
                heard = 0
                reply = asyncio.create_task(speak())
    if reply is not None:
        reply.cancel()


async def test_twilio_caller_against_a_fake_agent() -> None:
    rate = 8000
    turns = [
        RenderedTurn(TurnScript("hello", (Segment("hello"),)), [tone(0.4, rate)], rate=rate),
        RenderedTurn(
            TurnScript("paused", (Segment("a", 150), Segment("b")), BargeIn(200, "stop")),
            [tone(0.3, rate), tone(0.3, rate)],
            barge_in=tone(0.4, rate),
            rate=rate,
        ),
    ]
    scenario = RenderedScenario(Scenario("fake", "none", tuple(t.script for t in turns)), turns)
    timing = Timing(turn_timeout_s=5.0, settle_s=0.2, gap_s=0.3, quiet_s=0.5)
    lines: list[dict[str, Any]] = []
    async with serve(fake_twilio_agent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        records, time_up = await run_conversation(
            TWILIO, f"ws://127.0.0.1:{port}/", scenario, timing, time.perf_counter() + 30,
            lines.append, {"config": "fake"},
        )  # fmt: skip
    assert not time_up and len(records) == len(lines) == 2
    simple, barge = records
    assert not simple["missed"] and 250 <= simple["voice_to_voice_ms"] < 1000
    assert simple["wer"] is None and simple["stages_ms"] == {}
    assert barge["pauses"] == [{"pause_ms": 150, "false_interruption": False}]
    b = barge["barge_in"]
    assert b["reply_playing"] and b["interrupted"] and b["clear_ms"] is not None
    assert 30 <= b["latency_ms"] < 1000 and b["reply_v2v_ms"] is not None


async def test_before_turn_runs_before_each_turn_and_the_turn_waits_for_it() -> None:
    rate = 8000
    turns = [
        RenderedTurn(TurnScript(name, (Segment(name),)), [tone(0.3, rate)], rate=rate)
        for name in ("one", "two")
    ]
    scenario = RenderedScenario(Scenario("fake", "none", tuple(t.script for t in turns)), turns)
    timing = Timing(turn_timeout_s=5.0, settle_s=0.2, gap_s=0.3, quiet_s=0.5)
    lines: list[dict[str, Any]] = []
    seen: list[tuple[int, int]] = []

    async def before_turn(k: int) -> None:
        seen.append((k, len(lines)))  # turn k is asked only once every turn before it is over

    async with serve(fake_twilio_agent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        records, time_up = await run_conversation(
            TWILIO, f"ws://127.0.0.1:{port}/", scenario, timing, time.perf_counter() + 30,
            lines.append, {}, before_turn=before_turn,
        )  # fmt: skip
    assert not time_up and [r["missed"] for r in records] == [False, False]
    assert seen == [(0, 0), (1, 1)]


# ---------------------------------------------------------------- a real run


@pytest.mark.e2e
@pytest.mark.models
async def test_a_short_real_run_through_the_realtime_endpoint(server: Any, tmp_path: Path) -> None:
    scenarios = [
        Scenario(
            "real",
            "en-us+f3",
            (
                TurnScript("capital", (Segment("What is the capital of France?"),)),
                TurnScript(
                    "story",
                    (Segment("Please tell me a long story about a brave little dragon."),),
                    BargeIn(300, "Stop, wait a moment, I have a question."),
                ),
            ),
        )
    ]
    opts = BenchOptions(
        url=f"ws://127.0.0.1:{server.port}/v1/realtime",
        time_limit_s=240.0,
        timing=Timing(turn_timeout_s=60.0),
    )
    report = await benchmark(opts, scenarios, echo=lambda line: None)
    json_path, _ = write_outputs(report, tmp_path)
    data = json.loads(json_path.read_text())
    (config,) = data["configs"]
    assert config["error"] is None, config["error"]
    first, story = config["turns"]
    assert not first["missed"] and first["voice_to_voice_ms"] > 0, first
    assert first["stages_ms"]["first_audio_sent"] is not None and first["wer"] is not None
    assert config["summary"]["voice_to_voice_ms"]["p50"] > 0
    barge = story["barge_in"]
    assert barge is not None and barge["reply_playing"], story
    assert barge["status"] == "cancelled" and barge["latency_ms"] is not None, barge
    assert 0 < barge["latency_ms"] < 2000
    assert config["summary"]["barge_in_ms"]["n"] == 1
    probe = data["host_probe_ms"]
    assert probe["start"] > 0 and probe["end"] > 0
    level = config["levels"][0]["cpu"]  # (``--url``: no server process of its own to read)
    assert level["server_cores"] is None and 0 < level["host_busy"] <= 1


def test_the_asr_window_benchmark_weighs_beam_sizes_beside_the_windows() -> None:
    from benchmarks.asr_window import make_variants, parse_args

    args = parse_args(["--pads", "5", "--beams", "1,5"])
    assert args.pads == [5.0] and args.beams == [1, 5]
    variants = make_variants(args.pads, args.beams)
    assert [(v.name, v.pad_s, v.beam) for v in variants] == [
        ("full", None, 1), ("fit+5s", 5.0, 1), ("fit+5s/b5", 5.0, 5)
    ]  # fmt: skip
    assert [v.engine.options.beam_size for v in variants] == [1, 1, 5]
    for bad in (["--beams", "0"], ["--beams", "x"], ["--beams", ""]):
        with pytest.raises(SystemExit):
            parse_args(bad)
