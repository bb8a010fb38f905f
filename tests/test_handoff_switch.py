"""Switching the engine mid-call by policy: a tool the model calls, a keypad key, an HTTP call
on the live session; the conversation is carried over each time (the automatic switch on an
upstream failure is ``test_handoff_faults.py``)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import websockets

from pipeline import messages as m
from pipeline.context import Item, new_id
from pipeline.errors import ConfigError
from pipeline.handoff.policy import dtmf_switch
from voice.server import VoiceServer
from voice.tools import load_tools

from .conftest import test_config as base_config
from .fakes import call, fake_engines
from .handoff_peers import Front, peer_server, speech


async def test_a_tool_the_model_calls_hands_the_conversation_over() -> None:
    remote = fake_engines(["x"], ["Remote here, go on."], 20)
    local = fake_engines(
        ["put me through"], [call("hand_off", '{"engine": "openai-realtime"}'), "unused"], 20
    )
    async with peer_server(remote) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(local, url) as front:
            front.session.tools = load_tools("pipeline.handoff.tools")
            front.session.append_audio(speech(), 24_000)
            await front.until(lambda: front.done(2), "the call and the remote's answer")
            assert front.session.engine == "openai-realtime"
    call_done, answer = front.of(m.ReplyDone)
    assert call_done.calls[0].name == "hand_off"
    assert answer.item is not None and answer.item.text == "Remote here, go on."
    prompt = remote.llm.seen[0]  # type: ignore[attr-defined]
    assert prompt[1].content == "put me through"
    assert prompt[2].tool_calls[0].name == "hand_off" and prompt[3].role == "tool"
    assert len(local.llm.seen) == 1  # type: ignore[attr-defined]


async def test_a_keypad_key_switches_the_engine_and_back() -> None:
    async with peer_server(fake_engines(["x"], ["Remote."], 20)) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(fake_engines(["x"], ["Local."], 20), url) as front:
            keys = {"*": "openai-realtime", "0": "cascade"}
            front.session.observers.append(dtmf_switch(keys))
            front.session.keypad.settings.to_conversation = False
            front.session.dtmf("*")
            assert front.session.engine == "openai-realtime"
            relay = front.session.remote
            async with asyncio.timeout(20):
                await relay.ready.wait()  # type: ignore[union-attr]
            front.session.dtmf("0")
            assert front.session.engine == "cascade" and front.session.remote is None
    assert [e.digit for e in front.of(m.DtmfReceived)] == ["*", "0"]


def test_keypad_keys_are_checked_at_start() -> None:
    config = base_config()
    config.handoff.dtmf = "*=gpt-9"
    with pytest.raises(ConfigError, match="unknown engine 'gpt-9'"):
        VoiceServer(config, fake_engines(["x"], ["x"]))
    config.handoff.dtmf = "X=cascade"
    with pytest.raises(ConfigError, match="'X' is not a keypad key"):
        VoiceServer(config, fake_engines(["x"], ["x"]))


async def test_an_http_call_on_the_live_session_switches_it() -> None:
    async with peer_server(fake_engines(["x"], ["Remote."], 20)) as peer:
        upstream = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with (
            peer_server(fake_engines(["x"], ["x"]), **{"handoff.openai_url": upstream}) as front,
            websockets.connect(f"ws://127.0.0.1:{front.port}/v1/realtime") as ws,
            aiohttp.ClientSession() as http,
        ):
            assert json.loads(await ws.recv())["type"] == "session.created"
            (session,) = front.sessions.values()
            session.add_item(Item(new_id("item"), "user", text="remember the number 42"))
            base = f"http://127.0.0.1:{front.port}/v1/sessions"
            async with http.post(f"{base}/{session.id}/engine", json={"engine": "gpt-9"}) as r:
                assert r.status == 400 and "unknown engine 'gpt-9'" in await r.text()
            async with http.post(f"{base}/sess_nope/engine", json={"engine": "cascade"}) as r:
                assert r.status == 404
            async with http.post(
                f"{base}/{session.id}/engine", json={"engine": "openai-realtime"}
            ) as r:
                assert r.status == 200
                assert await r.json() == {"session_id": session.id, "engine": "openai-realtime"}
            relay = session.remote
            assert relay is not None
            async with asyncio.timeout(20):
                await relay.ready.wait()  # type: ignore[attr-defined]
            (upstream_session,) = peer.sessions.values()
            assert [i.text for i in upstream_session.conversation.items] == [
                "remember the number 42"
            ]


async def test_a_client_chooses_the_engine_with_session_update() -> None:
    async with peer_server(fake_engines(["x"], ["Remote."], 20)) as peer:
        upstream = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with (
            peer_server(fake_engines(["x"], ["x"]), **{"handoff.openai_url": upstream}) as front,
            websockets.connect(f"ws://127.0.0.1:{front.port}/v1/realtime") as ws,
        ):
            assert json.loads(await ws.recv())["type"] == "session.created"
            (session,) = front.sessions.values()
            bad = {"type": "session.update", "session": {"engine": "gemini-live"}}
            await ws.send(json.dumps(bad))
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["error"]["param"] == "session.engine"
            assert "'gemini-live' is not served here" in error["error"]["message"]
            good = {"type": "session.update", "session": {"engine": "openai-realtime"}}
            await ws.send(json.dumps(good))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            assert session.engine == "openai-realtime" and session.remote is not None
            async with asyncio.timeout(20):
                await session.remote.ready.wait()  # type: ignore[attr-defined]
            back = {"type": "session.update", "session": {"engine": "cascade"}}
            await ws.send(json.dumps(back))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            assert session.engine == "cascade" and session.remote is None


async def test_the_model_a_client_asks_for_chooses_the_engine() -> None:
    async with peer_server(fake_engines(["x"], ["Remote."], 20)) as peer:
        upstream = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.openai_url": upstream, "handoff.openai_model": "gpt-up"}
        async with peer_server(fake_engines(["x"], ["x"]), **settings) as front:
            base = f"ws://127.0.0.1:{front.port}/v1/realtime"
            async with websockets.connect(f"{base}?model=gpt-up") as ws:
                await ws.recv()
                (session,) = front.sessions.values()
                assert session.engine == "openai-realtime"
            async with websockets.connect(f"{base}?model=voice-local") as ws:
                await ws.recv()
                session = list(front.sessions.values())[-1]  # (the first may not be gone yet)
                assert session.engine == "cascade"
