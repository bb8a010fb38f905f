"""The rest of the protocol: extension events only for clients that ask, voices chosen from the
server's table, a speed that changes the speaking rate, ``conversation.item.retrieve``,
``previous_item_id: "root"``, ``output_audio_buffer.clear`` and the SDK's multipart
``POST /v1/realtime/calls``. Every server event is validated against the SDK's models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import websockets
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import HTTPBadRequest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from pipeline import messages as m
from pipeline.engines.tts_piper import PiperOptions, PiperTts
from pipeline.errors import ConfigError, EngineError
from pipeline.session import Session, SessionSettings
from transports.realtime.config import OPENAI_VOICES, RealtimeConfig
from transports.realtime.connection import (
    HELD_EVENT,
    INTERIM_EVENT,
    METRICS_EVENT,
    RESUMED_EVENT,
    RealtimeConnection,
)
from transports.realtime_request import wants_extensions
from transports.webrtc import WebRtcCall, WebRtcOptions
from voice import models
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import ToneTts, fake_engines
from .harness import Harness
from .offers import OFFER
from .realtime_schema import validate_server_event

Event = dict[str, Any]


def connection(*, extensions: bool = False, **config: Any) -> RealtimeConnection:
    session = Session(fake_engines(["hello"], ["Hi there."]), SessionSettings())
    return RealtimeConnection(
        session,
        RealtimeConfig("voice-local", session.settings, **config),
        max_event_bytes=1 << 20,
        extensions=extensions,
    )


def send(conn: RealtimeConnection, event: Event) -> list[Event]:
    out = conn.receive(json.dumps(event))
    for server_event in out:
        validate_server_event(server_event)
    return out


def only_error(out: list[Event]) -> dict[str, Any]:
    assert [e["type"] for e in out] == ["error"], out
    error: dict[str, Any] = out[0]["error"]
    return error


def text_item(text: str, item_id: str | None = None, **event: Any) -> Event:
    item: Event = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id:
        item["id"] = item_id
    return {"type": "conversation.item.create", "item": item, **event}


def drain(conn: RealtimeConnection) -> list[Event]:
    """The server events for what the session has queued so far (it is not running)."""
    out: list[Event] = []
    while not conn.session._events.empty():
        out += conn.render(conn.session._events.get_nowait())
    for event in out:
        validate_server_event(event)
    return out


# ------------------------------------------------------------------ extension events


@pytest.mark.parametrize("extensions", [False, True])
async def test_extension_events_only_for_clients_that_ask(extensions: bool) -> None:
    conn = connection(extensions=extensions)
    metrics = m.TurnMetrics("resp_1", "item_1", {"speech_end": 0.0})
    interim = m.InterimTranscript("item_1", "what time")
    held, resumed = m.ReplyHeld("resp_1", held=True), m.ReplyHeld("resp_1", held=False)
    rendered = [e for ev in (metrics, interim, held, resumed) for e in conn.render(ev)]
    asked = [METRICS_EVENT, INTERIM_EVENT, HELD_EVENT, RESUMED_EVENT]
    assert [e["type"] for e in rendered] == (asked if extensions else [])


def test_the_query_parameter_asks_for_extension_events() -> None:
    def asks(query: str) -> bool:
        return wants_extensions(make_mocked_request("GET", f"/v1/realtime{query}"))

    assert (asks(""), asks("?x_voice_events=0"), asks("?x_voice_events=1")) == (False, False, True)
    with pytest.raises(HTTPBadRequest) as refused:
        asks("?x_voice_events=yes")
    assert refused.value.text == "x_voice_events must be 0 or 1, got 'yes'"


@pytest.fixture
async def light_server() -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.webrtc.connect_timeout = 300.0  # far beyond the test
    server = VoiceServer(config, fake_engines(["hi"], ["Hello."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def two_replies(port: int, query: str) -> list[str]:
    """Two text turns over a WebSocket; the types of every event until the second reply ends."""
    types: list[str] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime{query}") as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"turn_detection": None}}))
        for word in ("one", "two"):
            await ws.send(json.dumps(text_item(word)))
            await ws.send(json.dumps({"type": "response.create"}))
            async with asyncio.timeout(10):
                while True:
                    event = json.loads(await ws.recv())
                    validate_server_event(event)
                    types.append(event["type"])
                    if event["type"] == "response.done":
                        break
    return types


async def test_the_metrics_event_reaches_only_websocket_clients_that_ask(
    light_server: VoiceServer,
) -> None:
    port = light_server.port
    assert port is not None
    plain = await two_replies(port, "")
    assert not [t for t in plain if t.startswith("x.")], plain
    asked = await two_replies(port, "?x_voice_events=1")
    first_done = asked.index("response.done")
    assert asked[first_done + 1] == METRICS_EVENT  # before the second reply starts
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime?x_voice_events=2"):
            pass
    assert refused.value.response.status_code == 400


# ------------------------------------------------------------------ voices


def voice_update(voice: Any, beta: bool = False) -> Event:
    session = {"voice": voice} if beta else {"audio": {"output": {"voice": voice}}}
    return {"type": "session.update", "session": session}


@pytest.mark.parametrize("name", OPENAI_VOICES)
async def test_every_openai_voice_speaks_with_the_servers_voice(name: str) -> None:
    conn = connection()
    (updated,) = send(conn, voice_update(name))
    assert updated["session"]["audio"]["output"]["voice"] == name  # as the client chose it
    assert conn.session.settings.voice == "joe"  # what synthesizes


async def test_a_voice_table_maps_names_to_the_server_voices() -> None:
    conn = connection(voices={"joe": "joe", "amy": "amy", "alloy": "amy", "echo": "joe"})
    assert conn.hello()[0]["session"]["audio"]["output"]["voice"] == "joe"
    send(conn, voice_update("alloy"))
    assert (conn.config.voice, conn.session.settings.voice) == ("alloy", "amy")
    send(conn, voice_update({"id": "joe"}, beta=True))
    assert (conn.config.voice, conn.session.settings.voice) == ("joe", "joe")


@pytest.mark.parametrize(
    ("voice", "beta", "param"),
    [
        ("nova", False, "session.audio.output.voice"),
        ("", True, "session.voice"),
        (7, False, "session.audio.output.voice"),
        ({"id": "custom_voice_123"}, True, "session.voice"),
    ],
)
async def test_an_unknown_voice_is_refused_with_the_list(
    voice: Any, beta: bool, param: str
) -> None:
    conn = connection()
    error = only_error(send(conn, voice_update(voice, beta)))
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert "alloy" in error["message"] and "joe" in error["message"], error
    assert (conn.config.voice, conn.session.settings.voice) == ("joe", "joe")  # unchanged


def test_the_voice_table_comes_from_the_configuration(tmp_path: Path) -> None:
    config = base_config()
    assert config.tts.voice_table() == {"joe": "joe", **dict.fromkeys(OPENAI_VOICES, "joe")}
    config.tts.voices = f"amy={tmp_path / 'amy.onnx'}"
    config.tts.voice_map = "alloy=amy, echo=joe"
    server = VoiceServer(config, fake_engines(["x"], ["y"]))
    conn = server.open_realtime()
    send(conn, voice_update("alloy"))
    assert conn.session.settings.voice == "amy"
    assert only_error(send(conn, voice_update("ash")))["code"] == "invalid_value"  # not mapped
    config.tts.voice_map = "alloy=nobody"
    with pytest.raises(ConfigError, match="no voice 'nobody'"):
        config.tts.voice_table()
    config.tts.voice_map = "alloy"
    with pytest.raises(ConfigError, match="expected name=value"):
        config.tts.voice_table()


# ------------------------------------------------------------------ speed


async def test_the_speed_is_reported_and_bounded() -> None:
    conn = connection()
    (updated,) = send(
        conn, {"type": "session.update", "session": {"audio": {"output": {"speed": 1.5}}}}
    )
    assert updated["session"]["audio"]["output"]["speed"] == 1.5 and conn.config.speed == 1.5
    error = only_error(send(conn, {"type": "session.update", "session": {"speed": 2}}))
    assert (error["code"], error["param"]) == ("invalid_value", "session.speed")


async def test_the_fake_tts_speaks_faster_at_a_higher_speed() -> None:
    tts = ToneTts(ms_per_word=200)
    normal, fast = (
        await tts.synthesize("one two three"),
        await tts.synthesize("one two three", speed=1.5),
    )
    assert len(fast) == pytest.approx(len(normal) / 1.5, abs=1)
    assert tts.requests[-1] == ("one two three", None, 1.5)


@pytest.fixture(scope="module")
def piper() -> PiperTts:
    voice = models.piper_joe()
    return PiperTts(PiperOptions(voice, more_voices={"joe_again": voice}))


SENTENCE = "The weather today is sunny with a light breeze from the west."


async def test_piper_speaks_faster_at_a_higher_speed(piper: PiperTts) -> None:
    normal = await piper.synthesize(SENTENCE)
    fast = await piper.synthesize(SENTENCE, speed=1.5)
    slow = await piper.synthesize(SENTENCE, speed=0.8)
    assert len(fast) <= 0.8 * len(normal), (len(fast), len(normal))
    assert len(slow) > len(normal)


async def test_piper_speaks_with_the_chosen_voice(piper: PiperTts) -> None:
    assert piper.voices == ["joe", "joe_again"]
    audio = await piper.synthesize("Hello there.", voice="joe_again")
    assert len(audio) > 0.3 * piper.sample_rate
    with pytest.raises(EngineError, match="no voice 'amy'"):
        await piper.synthesize("Hello there.", voice="amy")


# ------------------------------------------------------------------ items


async def test_an_item_is_retrieved_or_not_found() -> None:
    conn = connection()
    send(conn, text_item("remember this", "item_a"))
    (retrieved,) = send(conn, {"type": "conversation.item.retrieve", "item_id": "item_a"})
    assert retrieved["type"] == "conversation.item.retrieved"
    assert retrieved["item"]["id"] == "item_a"
    assert retrieved["item"]["content"] == [{"type": "input_text", "text": "remember this"}]
    error = only_error(send(conn, {"type": "conversation.item.retrieve", "item_id": "nope"}))
    assert (error["code"], error["param"]) == ("item_not_found", "item_id")


async def test_previous_item_id_root_inserts_at_the_start() -> None:
    conn = connection()
    send(conn, text_item("first", "item_a"))
    send(conn, text_item("second", "item_b"))
    send(conn, text_item("before all", "item_r", previous_item_id="root"))
    send(conn, text_item("after a", "item_c", previous_item_id="item_a"))
    ids = [item.id for item in conn.session.conversation.items]
    assert ids == ["item_r", "item_a", "item_c", "item_b"]
    added = {
        e["item"]["id"]: e["previous_item_id"]
        for e in drain(conn)
        if e["type"] == "conversation.item.added"
    }
    assert added == {"item_a": None, "item_b": "item_a", "item_r": None, "item_c": "item_a"}
    prompt = [msg.content for msg in conn.session.conversation.messages()[1:]]
    assert prompt == ["before all", "first", "after a", "second"]


async def test_root_in_an_empty_conversation_is_the_first_item() -> None:
    conn = connection()
    assert send(conn, text_item("alone", "item_a", previous_item_id="root")) == []
    assert [e["previous_item_id"] for e in drain(conn)] == [None, None]  # added, done


# ------------------------------------------------------------------ output_audio_buffer.clear


async def test_output_audio_buffer_clear_is_refused_on_a_websocket() -> None:
    error = only_error(send(connection(), {"type": "output_audio_buffer.clear", "event_id": "e1"}))
    assert (error["code"], error["param"], error["event_id"]) == ("unsupported_event", "type", "e1")
    assert "WebRTC" in error["message"]


async def test_output_audio_buffer_clear_on_webrtc_silences_and_cancels_the_reply() -> None:
    engines = fake_engines(["unused"], ["one two three four five six seven eight nine ten"])
    async with Harness(engines, SessionSettings(turn_detection=None, output_rate=48_000)) as h:
        conn = RealtimeConnection(
            h.session, RealtimeConfig("voice-local", h.session.settings), max_event_bytes=1 << 20
        )
        call = WebRtcCall(conn, WebRtcOptions(max_queued_ms=10_000), lambda call: None)
        try:
            send(conn, text_item("talk to me"))
            send(conn, {"type": "response.create"})
            while not h.of(m.ReplyAudio):
                await h.clock.advance(0.02)
            rendered = [e for _, ev in h.events for e in call._render(ev)]
            assert "output_audio_buffer.started" in [e["type"] for e in rendered]
            assert call.track.queued > 0
            (cleared,) = send(conn, {"type": "output_audio_buffer.clear"})
            response_id = h.of(m.ReplyAudio)[0].response_id
            assert cleared == {
                **cleared,
                "type": "output_audio_buffer.cleared",
                "response_id": response_id,
            }
            assert call.track.queued == 0
            seen = len(h.events)
            while not h.of(m.ReplyDone):
                await h.clock.advance(0.02)
            later = [e for _, ev in h.events[seen:] for e in call._render(ev)]
            for event in later:
                validate_server_event(event)
            (done,) = [e for e in later if e["type"] == "response.done"]
            assert done["response"]["status"] == "cancelled"
            assert not [e for e in later if e["type"].startswith("output_audio_buffer.")], later
            assert call.track.queued == 0  # what was still on its way is dropped too
        finally:
            await call.close("test over")


# ------------------------------------------------------------------ POST /v1/realtime/calls


async def offer_sdp() -> str:
    """A real aiortc offer without ICE candidates: answered, never connected."""
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.createDataChannel("oai-events")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = sdp.split("\r\n")
    return "\r\n".join(x for x in lines if not x.startswith(("a=candidate", "a=end-of-cand")))


async def test_the_sdk_creates_a_call_with_a_session(light_server: VoiceServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{light_server.port}/v1", api_key="x")
    sdp = await offer_sdp()
    session: Any = {
        "type": "realtime",
        "model": "voice-local",
        "instructions": "Be terse.",
        "audio": {"output": {"voice": "marin", "speed": 1.25}},
    }
    async with client:
        answer = await client.realtime.calls.with_raw_response.create(
            sdp=sdp,
            session=session,
            extra_query={"x_voice_events": "1"},
        )
        assert answer.status_code == 201
        assert answer.text.startswith("v=0") and "a=fingerprint" in answer.text
        (call,) = light_server.calls.values()
        assert answer.headers["Location"] == f"/v1/realtime/calls/{call.id}"
        config = call.conn.config
        assert (config.settings.instructions, config.voice, config.speed) == (
            "Be terse.",
            "marin",
            1.25,
        )
        assert config.settings.output_rate == 48_000 and call.conn.extensions

        plain = await client.realtime.calls.create(sdp=sdp)  # the raw application/sdp body
        assert plain.text.startswith("v=0") and len(light_server.calls) == 2
        assert not next(c for c in light_server.calls.values() if c is not call).conn.extensions

        beta: Any = {"type": "realtime", "voice": "nova"}  # the beta field name
        with pytest.raises(openai.BadRequestError) as refused:
            await client.realtime.calls.create(sdp=sdp, session=beta)
        assert "invalid_value: session.voice: unknown voice 'nova'" in refused.value.response.text
        assert len(light_server.calls) == 2  # no call for a refused configuration


@pytest.mark.parametrize(
    ("parts", "status", "message"),
    [
        ({"session": ("{}", "application/json")}, 400, "missing form part 'sdp'"),
        ({"sdp": ("v=0", "application/sdp"), "extra": ("1", "text/plain")}, 400, "unknown form part 'extra'"),
        ({"sdp": ("v=0", "application/sdp"), "session": ("[1]", "application/json")}, 400, "must be a JSON object"),
        ({"sdp": ("v=0", "application/sdp"), "session": ("{bad", "application/json")}, 400, "not valid JSON"),
        ({"sdp": (OFFER, "application/sdp"), "session": ('{"bogus": 1}', "application/json")}, 400, "unknown parameter 'session.bogus'"),
        ({"sdp": ("v=0", "application/sdp")}, 400, "no_audio"),
    ],
)  # fmt: skip
async def test_a_bad_form_is_refused_by_name(
    light_server: VoiceServer, parts: dict[str, tuple[str, str]], status: int, message: str
) -> None:
    form = aiohttp.FormData()
    for name, (value, content_type) in parts.items():
        form.add_field(name, value, content_type=content_type)
    url = f"http://127.0.0.1:{light_server.port}/v1/realtime/calls"
    async with aiohttp.ClientSession() as http, http.post(url, data=form()) as response:
        assert response.status == status
        assert message in await response.text()
    assert not light_server.calls
