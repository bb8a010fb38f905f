"""``voice bench --protocol sip``: the SIP caller (``benchmarks/harness/sip_client.py``) against
the in-process server with fake engines (a loudness VAD, scripted ASR and LLM, a tone for a
voice): it INVITEs the server's SIP agent over loopback UDP, talks PCMU RTP, and one plain turn
and one barge-in turn are measured as for a Twilio caller; the ``--echo`` speakerphone and the
CLI's protocol list take SIP too."""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from benchmarks.harness.protocols import parse_protocols
from benchmarks.harness.runner import Timing, run_conversation
from benchmarks.harness.scenarios import (
    BargeIn,
    RenderedScenario,
    RenderedTurn,
    Scenario,
    Segment,
    TurnScript,
)
from benchmarks.harness.sip_client import SipCaller
from benchmarks.harness.timeline import SIP
from benchmarks.harness.webrtc_client import open_any_call
from voice.server import VoiceServer

from . import conftest
from .fakes import fake_engines

RATE = 8000


def voice(seconds: float, hz: float = 330.0) -> np.ndarray:
    """The caller: a loud tone (not the agent's 220 Hz, so no echo canceller mistakes it)."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


@pytest.fixture
async def fake_server() -> AsyncIterator[VoiceServer]:
    long = " ".join(["word"] * 20)  # 4 s of tone; every reply after the first (the script's
    engines = fake_engines(["hello"], ["Hello there, how are you?", long])  # last repeats)
    server = VoiceServer(conftest.test_config(), engines)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_the_sip_caller_measures_a_turn_and_a_barge_in(fake_server: VoiceServer) -> None:
    assert fake_server.sip is not None
    turns = [
        RenderedTurn(TurnScript("hello", (Segment("hello"),)), [voice(0.5)], rate=RATE),
        RenderedTurn(
            TurnScript("paused", (Segment("a", 150), Segment("b")), BargeIn(1500, "stop")),
            [voice(0.4), voice(0.4)],
            barge_in=voice(0.6),
            rate=RATE,
        ),
    ]
    scenario = RenderedScenario(Scenario("fake", "none", tuple(t.script for t in turns)), turns)
    timing = Timing(turn_timeout_s=10.0, settle_s=0.3, gap_s=0.3, quiet_s=0.8)
    lines: list[dict[str, Any]] = []
    url = f"sip:agent@127.0.0.1:{fake_server.sip.port}"
    records, time_up = await run_conversation(
        SIP,
        url,
        scenario,
        timing,
        time.perf_counter() + 60,
        lines.append,
        {"config": "fake"},
        opener=open_any_call,
    )
    assert not time_up and len(records) == len(lines) == 2, records
    simple, barge = records
    assert not simple["missed"] and 0 < simple["voice_to_voice_ms"] < 3000, simple
    assert simple["wer"] is None and simple["stages_ms"] == {}
    assert barge["pauses"] == [{"pause_ms": 150, "false_interruption": False}], barge
    b = barge["barge_in"]
    assert b is not None and b["reply_playing"], barge
    # the cut is heard (a ``clear``: the agent's audio stopped mid-speech, then silence) after
    # the caller began; the fake VAD reacts within the 20 ms tick, so the last audible packet
    # may have left before the caller's first one (``latency_ms`` then 0 or None)
    assert b["interrupted"] and b["clear_ms"] is not None and 0 < b["clear_ms"] < 2000, b
    assert b["reply_v2v_ms"] is not None  # the reply to the interruption was heard too


def test_sip_is_a_protocol() -> None:
    """SIP is one of the protocols (its speakerphone: ``test_bench_sip_echo.py``)."""
    assert parse_protocols("twilio,sip") == ["twilio", "sip"]
    with pytest.raises(argparse.ArgumentTypeError, match="sip"):
        parse_protocols("sips")
    assert isinstance(open_any_call(SIP, "sip:agent@127.0.0.1:5060"), SipCaller)


async def test_a_refused_call_is_a_connection_error_and_leaves_nothing_open() -> None:
    config = conftest.test_config()
    config.sip.max_dialogs = 0  # every call: 486 Busy Here
    server = VoiceServer(config, fake_engines(["x"], ["y"]))
    await server.start("127.0.0.1", 0)
    try:
        assert server.sip is not None
        caller = SipCaller(f"sip:agent@127.0.0.1:{server.sip.port}")
        with pytest.raises(ConnectionError, match="486"):
            async with caller:
                pass
        assert caller._media is not None and caller._media.is_closing()
    finally:
        await server.stop()
