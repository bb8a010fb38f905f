"""``voice bench --protocol webrtc``: the parts that need no network — the protocol list, one
report of several protocols, and the caller's microphone track — and the whole command once, in
the namespace it makes (the models: marked). The harness's WebRTC caller through a question and a
barge-in is in ``test_webrtc.py``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import cli as bench_cli
from benchmarks.harness import netns as harness_netns
from benchmarks.harness.bench import BenchOptions
from benchmarks.harness.clients import RealtimeCall, TwilioCall
from benchmarks.harness.protocols import merge_reports, parse_protocols
from benchmarks.harness.server import endpoint
from benchmarks.harness.webrtc_client import (
    FRAME,
    MAX_QUEUED_FRAMES,
    MicrophoneTrack,
    WebRtcCall,
    open_any_call,
)


def test_protocols_are_a_list_in_the_order_given() -> None:
    assert parse_protocols("realtime") == ["realtime"]
    assert parse_protocols("webrtc, realtime,twilio,webrtc") == ["webrtc", "realtime", "twilio"]
    with pytest.raises(argparse.ArgumentTypeError, match="choose from realtime, webrtc, twilio"):
        parse_protocols("realtime,carrier-pigeon")


def test_one_url_takes_one_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_cli.main(["--url", "ws://127.0.0.1:9/v1/realtime", "--protocol", "realtime,webrtc"])
    assert "one --protocol" in capsys.readouterr().err


def test_each_protocol_gets_its_caller_its_rate_and_its_url() -> None:
    url = "http://10.99.0.1:8000/v1/realtime/calls"
    call = open_any_call("webrtc", url)
    assert isinstance(call, WebRtcCall) and call.protocol == "realtime"  # Realtime events
    assert call.url == url + "?x_voice_events=1" and call.mic.size == FRAME
    assert type(open_any_call("realtime", "ws://h/v1/realtime")) is RealtimeCall
    assert isinstance(open_any_call("twilio", "ws://h/v1/twilio/media-stream"), TwilioCall)
    assert [BenchOptions(protocol=p).rate for p in ("realtime", "twilio", "webrtc")] == [
        24_000,
        8_000,
        48_000,
    ]


def test_a_server_on_a_namespace_address_is_reached_there() -> None:
    assert endpoint("10.99.0.1", 8000, "webrtc") == "http://10.99.0.1:8000/v1/realtime/calls"
    assert endpoint("10.99.0.1", 8000, "realtime") == "ws://10.99.0.1:8000/v1/realtime"


def report(protocol: str, p50: float) -> dict[str, object]:
    summary = {"voice_to_voice_ms": {"p50": p50}}
    return {
        "protocol": protocol,
        "started_utc": f"{protocol}-start",
        "finished_utc": f"{protocol}-end",
        "wall_s": 10.0,
        "options": {"rate": {"webrtc": 48_000}.get(protocol, 24_000), "time_limit_s": 50.0},
        "configs": [
            {"name": "optimized", "summary": summary, "turns": [{"config": "optimized"}]},
        ],
    }


def test_several_protocols_make_one_report_compared_with_the_first() -> None:
    merged = merge_reports([report("realtime", 500.0), report("webrtc", 550.0)])
    assert merged["protocol"] == "realtime,webrtc"
    assert [c["name"] for c in merged["configs"]] == ["optimized@realtime", "optimized@webrtc"]
    assert [c["protocol"] for c in merged["configs"]] == ["realtime", "webrtc"]
    assert merged["configs"][1]["turns"] == [{"config": "optimized@webrtc"}]
    assert merged["options"]["rate"] == {"realtime": 24_000, "webrtc": 48_000}
    assert (merged["started_utc"], merged["finished_utc"]) == ("realtime-start", "webrtc-end")
    (comparison,) = merged["comparisons"]
    assert comparison["other"] == "optimized@webrtc"
    assert comparison["ratios"]["voice_to_voice_ms.p50"] == pytest.approx(1.1)
    single = report("webrtc", 1.0)
    assert merge_reports([single]) is single


async def test_the_microphone_track_sends_each_chunk_once_in_order() -> None:
    track = MicrophoneTrack()
    waiting = asyncio.create_task(track.recv())  # aiortc asks before anything is said
    await asyncio.sleep(0)
    assert not waiting.done()
    for value in (1, 2, 3):
        track.put(np.full(FRAME, value, np.int16))
    frames = [await waiting, await track.recv(), await track.recv()]
    assert [int(f.to_ndarray()[0, 0]) for f in frames] == [1, 2, 3]
    assert [f.pts for f in frames] == [0, FRAME, 2 * FRAME] and frames[0].sample_rate == 48_000
    with pytest.raises(ValueError, match="960 samples"):
        track.put(np.zeros(480, np.int16))


async def test_the_microphone_track_keeps_only_the_newest_second_when_nobody_reads() -> None:
    track = MicrophoneTrack()
    for value in range(MAX_QUEUED_FRAMES + 10):
        track.put(np.full(FRAME, value, np.int16))
    frame = await track.recv()
    assert int(frame.to_ndarray()[0, 0]) == 10  # the oldest ten were dropped
    track.stop()


@pytest.mark.e2e
@pytest.mark.models
def test_voice_bench_over_webrtc_makes_its_namespace_and_measures_a_turn(tmp_path: Path) -> None:
    """The command as a person runs it: it starts itself again in a namespace of its own, starts
    the server there, and a question asked over WebRTC is answered and measured."""
    reason = harness_netns.available()
    if reason is not None:
        pytest.skip(reason)
    argv = ["--protocol", "webrtc", "--turns", "1", "--time-limit", "300", "--turn-timeout", "90"]
    assert bench_cli.main([*argv, "--config", "optimized=", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench-latest.json").read_text())
    assert report["protocol"] == "webrtc"
    (config,) = report["configs"]
    assert config["error"] is None and config["url"].startswith("http://10.99.0.1:")
    (turn,) = config["turns"]
    assert not turn["missed"] and turn["voice_to_voice_ms"] > 0, turn
    assert turn["stages_ms"]["first_audio_sent"] is not None and turn["transport_ms"] is not None
    assert turn["wer"] is not None and turn["wer"] <= 0.5, turn["user_transcript"]


async def test_a_refused_offer_is_a_connection_error_and_leaves_no_peer_connection() -> None:
    call = WebRtcCall("http://127.0.0.1:9/v1/realtime/calls")  # nothing listens on port 9
    with pytest.raises(ConnectionError, match="POST"):
        async with call:
            pass
    assert call._pc is not None and call._pc.connectionState == "closed"


def test_audio_that_overtakes_its_started_event_is_counted_as_the_next_replys() -> None:
    from benchmarks.harness.timeline import AUDIO

    call = WebRtcCall("http://10.99.0.1:1/v1/realtime/calls")

    def said(kind: str, response: str, at: float) -> None:
        call.handle({"type": f"output_audio_buffer.{kind}", "response_id": response}, at)

    said("started", "r1", 1.0)
    call._heard(1.01)
    said("cleared", "r1", 2.0)  # the caller cut in
    call._heard(2.005)  # a frame of r1 that was in flight: nobody's
    call._heard(3.0)  # r2's first frames, ahead of its started event on the data channel
    call._heard(3.01)
    said("started", "r2", 3.02)
    call._heard(3.03)
    said("stopped", "r2", 4.0)
    call._heard(4.1)  # r2's last frames, after it was all queued
    call._heard(5.0)  # long after: the next reply's
    said("started", "r3", 5.05)
    heard = [(ev.t, ev.response) for ev in call.events if ev.kind == AUDIO]
    assert heard == [
        (1.01, "r1"), (3.0, "r2"), (3.01, "r2"), (3.03, "r2"), (4.1, "r2"), (5.0, "r3")
    ]  # fmt: skip
