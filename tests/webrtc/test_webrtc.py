"""The WebRTC endpoint with a real WebRTC peer (aiortc), over a veth pair in a private network
namespace: a spoken turn, bad offers and messages, and teardown after 20 calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.test_engines import wer
from tests.webrtc.scenarios import QUESTION

pytestmark = [pytest.mark.e2e, pytest.mark.models]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("webrtc") / "results.json"
    return netns.run_scenarios("tests.webrtc.scenarios", out, timeout=900)


def test_a_spoken_turn_over_webrtc(results: dict[str, Any]) -> None:
    turn = results["turn"]
    assert wer(QUESTION, turn["user"]) <= 0.2, turn["user"]
    assert turn["reply"].strip()
    assert turn["loud_frames"] > 25  # more than half a second of the agent's voice arrived
    assert turn["voice_to_voice_ms"] is not None
    types = turn["types"]
    assert "response.output_audio.delta" not in types  # audio rides the track
    assert types.index("output_audio_buffer.started") < types.index("response.done")
    assert "output_audio_buffer.stopped" in types


def test_the_benchmarks_webrtc_caller_completes_turns_and_a_barge_in(
    results: dict[str, Any],
) -> None:
    run = results["harness"]
    assert run["time_up"] is False
    question, story = run["records"]
    assert not question["missed"] and question["voice_to_voice_ms"] > 0, question
    assert question["errors"] == [] and question["reply_status"] == "completed"
    assert wer(QUESTION, question["user_transcript"]) <= 0.2, question["user_transcript"]
    assert question["stages_ms"]["first_audio_sent"] is not None  # the server's breakdown
    assert question["transport_ms"] is not None and question["reply_transcript"].strip()
    barge = story["barge_in"]
    assert barge is not None and barge["reply_playing"], story
    assert barge["status"] == "cancelled" and barge["interrupted"], barge
    # (its stop is timed only when the caller cut into its speech, not into a pause between
    # its sentences: the track sends silence then, and no sound of the reply came after)
    assert barge["reply_v2v_ms"] is not None  # and the answer to the interruption was heard
    assert run["calls_after"] == 0  # the caller hung up


def test_bad_offers_and_messages_get_clear_errors(results: dict[str, Any]) -> None:
    bad = results["bad_input"]
    assert bad["malformed"][0] == 400 and "invalid_sdp" in bad["malformed"][1]
    assert bad["content_type"][0] == 415 and "application/sdp" in bad["content_type"][1]
    assert bad["oversized"][0] == 413
    assert bad["no_audio"][0] == 400 and "no_audio" in bad["no_audio"][1]
    assert bad["unusable"][0] == 400
    assert bad["second_offer"][0] == 409
    codes = [(e["code"], e["event_id"]) for e in bad["channel_errors"]]
    assert codes == [("invalid_json", None), ("unknown_event", "evt_7")]
    assert bad["still_serving"] == "still here"
    assert (bad["hangup"], bad["hangup_again"]) == (200, 404)
    assert bad["calls_after"] == 0


def test_nothing_is_left_behind_after_20_calls(results: dict[str, Any]) -> None:
    t = results["teardown"]
    assert t["ended"] == 20
    assert (t["calls"], t["sessions"]) == (0, 0)
    assert t["peer_connections"] == 0
    assert t["tracks"] == 0
    assert t["tasks_left"] == []  # every task a call started has finished
    assert t["tasks_after"] <= t["tasks_before"]


def test_a_tab_closed_mid_reply_keeps_the_transcript(results: dict[str, Any]) -> None:
    record = results["teardown"]["mid_reply_record"]
    items = record["items"]
    assert items[0]["role"] == "user" and "dragon" in items[0]["text"].lower()
    assert items[1]["role"] == "assistant" and items[1]["status"] == "incomplete"


def test_artifacts_dir_is_ignored_by_git() -> None:
    assert "tests/artifacts/" in (Path(__file__).parents[2] / ".gitignore").read_text()
