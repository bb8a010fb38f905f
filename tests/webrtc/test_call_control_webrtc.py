"""Call control of a WebRTC call with the official ``openai`` SDK: a second client watches and
steers it (``?call_id=``), and ``/hangup`` ends it; ``/refer``, ``/accept`` and ``/reject``
are refused with a clear error (a WebRTC call is answered when created and has no SIP leg).
Runs in a private network namespace (``tests/netns.py``) on fake engines."""

from __future__ import annotations

from typing import Any

import pytest

from tests import netns

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("call-control") / "results.json"
    watch: dict[str, Any] = netns.run_scenarios(
        "tests.webrtc.call_control_scenarios", out, timeout=180
    )["watch"]
    return watch


def test_a_watcher_steers_the_call_and_the_caller_hears_it(results: dict[str, Any]) -> None:
    assert results["instructions"] == "Be brief."
    assert results["response_status"] == "completed"
    assert results["caller_response_done"] >= 1  # the call's own client saw the response too
    types = results["watcher_types"]
    assert "response.output_audio_transcript.delta" in types
    assert "response.output_audio.delta" not in types  # the audio rides the call's track


def test_a_webrtc_call_cannot_be_referred_accepted_or_rejected(results: dict[str, Any]) -> None:
    assert results["refer"] == {"status": 400, "code": "refer_not_supported"}
    assert results["accept"] == {"status": 409, "code": "call_not_incoming"}
    assert results["reject"] == {"status": 409, "code": "call_not_incoming"}


def test_hangup_ends_the_call_and_its_watchers(results: dict[str, Any]) -> None:
    assert results["closed_reason"] == "hung up by the client"
    assert results["watcher_close"] == [1000, "call ended: hung up by the client"]
    assert results["again"] == {"status": 404, "code": "call_not_found"}
    assert results["calls_left"] == 0
