"""Call control of a WebRTC call, run inside a private network namespace (``tests/netns.py``)
by ``test_call_control_webrtc.py``: the server on fake engines, an aiortc caller, and the
official ``openai`` SDK as the second client that watches and steers the call
(``client.realtime.connect(call_id=…)``) and hangs it up (``client.realtime.calls.hangup``).

    python -m tests.webrtc.call_control_scenarios OUT.json
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import openai

from tests.conftest import test_config
from tests.fakes import fake_engines
from tests.netns import SERVER_IP
from tests.realtime_schema import validate_server_event
from tests.webrtc.peer import RtcCaller
from voice.server import VoiceServer

WAIT = 20.0


async def next_event(conn: Any, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            event = (await conn.recv()).to_dict()
            seen.append(event)
            if event["type"] == kind:
                return event


async def _refusal(call: Any) -> dict[str, Any]:
    try:
        await call
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "code": exc.code}
    return {"status": 200}


async def watch_and_hang_up(server: VoiceServer, base: str) -> dict[str, Any]:
    caller = RtcCaller(base)
    assert await caller.connect() == 201
    await caller.wait_for(lambda: caller.of("session.created"), WAIT, "session.created")
    call_id = caller.location.rsplit("/", 1)[-1]  # type: ignore[union-attr]
    session = server.calls[call_id].session
    out: dict[str, Any] = {"call_id": call_id}
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
    seen: list[dict[str, Any]] = []
    async with client.realtime.connect(call_id=call_id, max_retries=0) as watcher:
        created = await next_event(watcher, "session.created", seen)
        out["watcher_instructions"] = created["session"]["instructions"]
        await watcher.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await next_event(watcher, "session.updated", seen)
        out["instructions"] = session.settings.instructions
        await watcher.response.create()
        done = await next_event(watcher, "response.done", seen)
        out["response_status"] = done["response"]["status"]
        # the reply is played to the caller on its track, announced on its data channel
        await caller.wait_for(
            lambda: caller.of("output_audio_buffer.stopped"), WAIT, "the reply on the track"
        )
        out["caller_response_done"] = len(caller.of("response.done"))
        out["watcher_types"] = [e["type"] for e in seen]
        for event in seen:
            validate_server_event(event)
        calls = client.realtime.calls
        out["refer"] = await _refusal(calls.refer(call_id, target_uri="sip:desk@example.com"))
        out["accept"] = await _refusal(calls.accept(call_id, type="realtime"))
        out["reject"] = await _refusal(calls.reject(call_id))
        await calls.hangup(call_id)
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    await watcher.recv()
        except Exception as exc:  # the socket closed (how the SDK says so varies)
            out["watcher_error"] = type(exc).__name__
        ws = watcher._connection
        out["watcher_close"] = [ws.close_code, ws.close_reason]
    async with asyncio.timeout(WAIT):
        record = await server.wait_ended(session.id)
    out["closed_reason"] = record["closed_reason"]
    out["again"] = await _refusal(client.realtime.calls.hangup(call_id))
    out["calls_left"] = len(server.call_control.registry)
    await caller.close()
    await client.close()
    return out


async def main() -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    config = test_config()
    config.server.allow_unauthenticated = True  # the address exists only in this namespace
    server = VoiceServer(config, fake_engines(["unused"], ["Hello from the desk."]))
    await server.start(SERVER_IP, 0)
    try:
        async with asyncio.timeout(120):
            return {"watch": await watch_and_hang_up(server, f"http://{SERVER_IP}:{server.port}")}
    finally:
        await server.stop()


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(asyncio.run(main()), indent=1, default=str))
