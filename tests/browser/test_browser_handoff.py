"""The web client in a real browser over the OpenAI Realtime hand-off: the front server's engine
is ``openai-realtime``, its upstream this same server as a second process (the real models) on
the namespace's loopback (``handoff_scenario.py`` runs it all; this checks what it observed)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests import netns
from tests.browser.handoff_scenario import NEVER
from tests.browser.page import CHROMIUM
from tests.test_engines import wer

pytestmark = [pytest.mark.e2e, pytest.mark.models]
QUESTION = "Who painted the Mona Lisa?"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is needed (apt-get install chromium; make system-deps does)")
    out = tmp_path_factory.mktemp("browser-handoff") / "results.json"
    return netns.run_scenarios("tests.browser.handoff_scenario", out, timeout=900)


def test_a_spoken_turn_from_the_browser_through_the_upstream(results: dict[str, Any]) -> None:
    call = results["handoff"]
    assert "error" not in call, f"{call['error']}\npage: {call.get('page')}"
    page = call["page"]
    assert page["errors"] == [], page["errors"]
    assert not [line for line in call["console"] if line.startswith(("error", "pageerror"))]
    assert call["ended_because"] == "hung up by the client", call["ended_because"]
    assert call["calls_after_hangup"] == call["sessions_after_hangup"] == 0

    # the page heard a spoken reply (the upstream's voice, relayed over the page's WebRTC call)
    assert page["transport"] == "webrtc"
    assert "output_audio_buffer.started" in page["events"]
    assert call["recorded_sound_s"] > 0.5, call["recorded_s"]
    # both sides of the conversation are on the page: the upstream's words, not the front's
    (asked,) = page["user"]
    assert "painted" in asked.lower() and wer(QUESTION, asked) <= 0.4, asked  # (espeak, tiny.en)
    assert page["agent"] and page["agent"][0].strip(), page["agent"]
    assert NEVER not in page["agent"][0]
    # tiny SmolLM2 sometimes loops until the token limit ("…they were both very talented
    # people. they were both …"): that reply ends "incomplete", a finished turn all the same
    reply = next(t for t in page["turns"] if t["status"] in ("completed", "incomplete"))
    assert reply["metrics"], reply

    # the upstream's transcript is the same conversation
    assert "upstream_error" not in results, results.get("upstream_error")
    items = [i for i in results["upstream_items"] if i.get("type", "message") == "message"]
    user, agent = items[0], items[1]
    assert user["role"] == "user" and user["text"].strip() == asked.strip(), items
    assert agent["role"] == "assistant" and agent["text"].strip(), items
    if reply["status"] == "completed":
        assert agent["text"].strip() == page["agent"][0].strip()
    else:  # cut off: the page and the upstream each keep the reply's beginning, as far as
        # they had it when the page hung up (its last words may have been in flight)
        shorter, longer = sorted((agent["text"].strip(), page["agent"][0].strip()), key=len)
        assert shorter and longer.startswith(shorter), (agent, page["agent"])
