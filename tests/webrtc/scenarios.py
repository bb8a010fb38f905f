"""WebRTC scenarios, run inside a private network namespace (see ``tests/netns.py``) by
``test_webrtc.py``: the server and aiortc callers in one process, observations written as JSON.

    python -m tests.webrtc.scenarios OUT.json
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection

from benchmarks.harness.runner import Timing, run_conversation
from benchmarks.harness.scenarios import BargeIn, Renderer, Scenario, Segment, TurnScript
from benchmarks.harness.webrtc_client import WEBRTC_RATE, open_any_call
from tests.conftest import espeak, test_config
from tests.netns import SERVER_IP
from tests.webrtc.peer import RtcCaller
from transports.webrtc import ReplyTrack
from voice.engines import close_engines, load_engines, warm_up
from voice.server import VoiceServer

QUESTION = "Who painted the Mona Lisa?"


async def turn(server: VoiceServer, base: str) -> dict[str, Any]:
    caller = RtcCaller(base)
    assert await caller.connect() == 201
    await caller.wait_for(lambda: caller.of("session.created"), 20, "session.created")
    caller.mic.say(espeak(QUESTION, rate=48_000))
    await caller.wait_for(lambda: caller.of("output_audio_buffer.stopped"), 90, "the reply to end")
    first_loud = caller.loud_audio_after(caller.mic.last_speech_sent)
    result = {
        "status": caller.location is not None,
        "types": caller.types(),
        "user": caller.of("conversation.item.input_audio_transcription.completed")[0]["transcript"],
        "reply": caller.of("response.done")[0]["response"]["output"][0]["content"][0]["transcript"],
        "loud_frames": sum(
            1 for _, f in caller.audio if abs(int(f.max())) > 500 or abs(int(f.min())) > 500
        ),
        "voice_to_voice_ms": None
        if first_loud is None
        else (first_loud - caller.mic.last_speech_sent) * 1000,
    }
    await caller.close()
    return result


STORY = "Please tell me a long story about a brave little dragon."
STOP = "Stop, wait a moment, I have a question."


async def harness(server: VoiceServer, base: str) -> dict[str, Any]:
    """``voice bench --protocol webrtc``'s caller, driven by the harness: a question, then a
    story cut short by the caller."""
    scenario = Scenario(
        "webrtc",
        "en-us+f3",
        (
            TurnScript("question", (Segment(QUESTION),)),
            TurnScript("story", (Segment(STORY),), BargeIn(300, STOP)),
        ),
    )
    rendered = await asyncio.to_thread(Renderer(WEBRTC_RATE).render, scenario)
    records, time_up = await run_conversation(
        "webrtc",
        f"{base}/v1/realtime/calls",
        rendered,
        Timing(turn_timeout_s=60.0),
        time.perf_counter() + 240,
        lambda record: None,
        {},
        opener=open_any_call,
    )
    return {"records": records, "time_up": time_up, "calls_after": len(server.calls)}


async def bad_input(server: VoiceServer, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        url = f"{base}/v1/realtime/calls"
        sdp = {"Content-Type": "application/sdp"}
        async with http.post(url, data="hello, I am not SDP", headers=sdp) as r:
            out["malformed"] = [r.status, await r.text()]
        async with http.post(
            url, data='{"sdp": "v=0"}', headers={"Content-Type": "application/json"}
        ) as r:
            out["content_type"] = [r.status, await r.text()]
        async with http.post(url, data="v=0\r\n" + "a=x\r\n" * 20_000, headers=sdp) as r:
            out["oversized"] = [r.status, await r.text()]
        data_only = RTCPeerConnection()
        data_only.createDataChannel("oai-events")
        await data_only.setLocalDescription(await data_only.createOffer())
        async with http.post(url, data=data_only.localDescription.sdp, headers=sdp) as r:
            out["no_audio"] = [r.status, await r.text()]
        await data_only.close()
        garbled = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
        async with http.post(url, data=garbled, headers=sdp) as r:
            out["unusable"] = [r.status, await r.text()]
        caller = RtcCaller(base)
        assert await caller.connect() == 201
        await caller.wait_for(lambda: caller.of("session.created"), 20, "session.created")
        async with http.post(
            f"{base}{caller.location}", data=caller.pc.localDescription.sdp, headers=sdp
        ) as r:
            out["second_offer"] = [r.status, await r.text()]
        caller.send("this is not JSON")
        caller.send({"type": "no.such.event", "event_id": "evt_7"})
        await caller.wait_for(lambda: len(caller.of("error")) >= 2, 10, "two errors")
        out["channel_errors"] = [e["error"] for e in caller.of("error")]
        caller.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "still here"},
            }
        )
        await caller.wait_for(lambda: caller.of("session.updated"), 10, "session.updated")
        out["still_serving"] = caller.of("session.updated")[0]["session"]["instructions"]
        async with http.post(f"{base}{caller.location}/hangup") as r:
            out["hangup"] = r.status
        async with http.post(f"{base}{caller.location}/hangup") as r:
            out["hangup_again"] = r.status
        await caller.close()
    out["calls_after"] = len(server.calls)
    return out


async def _call_and_leave(server: VoiceServer, base: str, hang_up: bool) -> str:
    caller = RtcCaller(base)
    assert await caller.connect() == 201
    await caller.wait_for(lambda: caller.of("session.created"), 20, "session.created")
    call_id = caller.location.rsplit("/", 1)[-1]  # type: ignore[union-attr]
    session_id = server.calls[call_id].session.id
    if hang_up:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{base}{caller.location}/hangup") as r,
        ):
            assert r.status == 200
    await caller.close()  # without a hang-up, the peer just goes away
    return session_id


async def _leave_mid_reply(server: VoiceServer, base: str) -> str:
    """Like a browser tab closed while the agent speaks."""
    caller = RtcCaller(base)
    assert await caller.connect() == 201
    await caller.wait_for(lambda: caller.of("session.created"), 20, "session.created")
    call_id = caller.location.rsplit("/", 1)[-1]  # type: ignore[union-attr]
    session_id = server.calls[call_id].session.id
    caller.mic.say(espeak("Please tell me a long story about a brave little dragon.", rate=48_000))
    await caller.wait_for(lambda: caller.of("output_audio_buffer.started"), 90, "the reply")
    await caller.close()
    return session_id


async def teardown(server: VoiceServer, base: str, cycles: int = 20) -> dict[str, Any]:
    gc.collect()
    baseline = asyncio.all_tasks()
    ended = 0
    for i in range(cycles):
        session_id = await _call_and_leave(server, base, hang_up=bool(i % 2))
        async with asyncio.timeout(30):
            await server.wait_ended(session_id)
        ended += 1
    session_id = await _leave_mid_reply(server, base)
    async with asyncio.timeout(30):
        record = await server.wait_ended(session_id)
    # aiortc's transports finish their own last tasks after close(): wait for them (bounded)
    leftover = asyncio.all_tasks() - baseline - {asyncio.current_task()}
    if leftover:
        await asyncio.wait(leftover, timeout=10)
    gc.collect()
    return {
        "ended": ended,
        "calls": len(server.calls),
        "sessions": len(server.sessions),
        "tasks_before": len(baseline),
        "tasks_after": len(asyncio.all_tasks()),
        "tasks_left": sorted(t.get_name() for t in asyncio.all_tasks() - baseline if not t.done()),
        "peer_connections": sum(isinstance(o, RTCPeerConnection) for o in gc.get_objects()),
        "tracks": sum(isinstance(o, ReplyTrack) for o in gc.get_objects()),
        "mid_reply_record": record,
    }


async def main() -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    config = test_config()
    # the address exists only inside this test's own network namespace
    config.server.allow_unauthenticated = True
    engines = load_engines(config).engines
    warm_up(engines)
    server = VoiceServer(config, engines)
    await server.start(SERVER_IP, 0)
    base = f"http://{SERVER_IP}:{server.port}"
    results: dict[str, Any] = {}
    try:
        for name, scenario in (
            ("turn", turn),
            ("harness", harness),
            ("bad_input", bad_input),
            ("teardown", teardown),
        ):
            async with asyncio.timeout(300):
                results[name] = await scenario(server, base)
    finally:
        await server.stop()
        close_engines(engines)
    return results


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(asyncio.run(main()), indent=1, default=str))
