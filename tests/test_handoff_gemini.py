"""The Gemini Live hand-off: the codec on JSON (both spellings of field names), a session
relayed to a Gemini Live test server on loopback (``gemini_server.py``), and the official
``google-genai`` SDK's live client against that same server over TLS, which proves the
server speaks what the SDK speaks."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.context import Item
from pipeline.engines.tools import ToolSpec
from pipeline.handoff import base as b
from pipeline.handoff.gemini_live import PATH, GeminiLiveCodec, camel
from pipeline.handoff.relay import opener
from pipeline.session import SessionSettings

from .fakes import fake_engines, silence, tone
from .gemini_server import Call, GeminiLiveServer, Script, self_signed
from .handoff_peers import Front, speech

# ---------------------------------------------------------------- the codec, sans I/O


def codec(**settings: str) -> GeminiLiveCodec:
    return GeminiLiveCodec(b.UpstreamSettings("wss://g.example" + PATH, **settings))


def test_setup_first_with_instructions_tools_voice_and_the_history() -> None:
    c = codec(key="AIza-test", model="gemini-live-x", voice="Puck")
    history = [
        Item("u1", "user", "Is it cold?", audio=True),
        Item("a1", "assistant", type="function_call", call_id="c1", name="temp", arguments="{}"),
        Item("t1", "tool", '{"c": 3}', type="function_call_output", call_id="c1", name="temp"),
        Item("a2", "assistant", "Three degrees."),
    ]
    setup = b.SessionSetup("Be brief.", [ToolSpec("temp")], history=history, upstream_vad=False)
    first, context = (json.loads(f) for f in c.setup(setup))
    assert c.url() == "wss://g.example" + PATH
    assert c.headers() == {"x-goog-api-key": "AIza-test"}
    body = first["setup"]
    assert body["model"] == "models/gemini-live-x"
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["tools"][0]["functionDeclarations"][0]["name"] == "temp"
    voice = body["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]
    assert voice == {"voiceName": "Puck"}
    assert body["realtimeInputConfig"]["automaticActivityDetection"] == {"disabled": True}
    assert "inputAudioTranscription" in body and "outputAudioTranscription" in body
    assert context["clientContent"]["turnComplete"] is False
    assert context["clientContent"]["turns"] == [
        {"role": "user", "parts": [{"text": "Is it cold?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "temp", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "temp", "response": {"c": 3}}}]},
        {"role": "model", "parts": [{"text": "Three degrees."}]},
    ]


def test_audio_in_with_this_servers_turn_detection_is_framed_by_activity() -> None:
    c = codec()
    c.setup(b.SessionSetup("x", upstream_vad=False))
    pcm = np.array([1, 2], dtype="<i2").tobytes()
    frames = [json.loads(f) for f in [*c.audio(pcm), *c.audio(pcm), *c.commit()]]
    assert frames[0] == {"realtimeInput": {"activityStart": {}}}
    assert frames[1]["realtimeInput"]["audio"]["mimeType"] == "audio/pcm;rate=16000"
    assert base64.b64decode(frames[1]["realtimeInput"]["audio"]["data"]) == pcm
    assert [next(iter(f["realtimeInput"])) for f in frames] == [
        "activityStart", "audio", "audio", "activityEnd"
    ]  # fmt: skip


def test_server_messages_in_either_spelling() -> None:
    audio = base64.b64encode(np.array([7, -7], dtype="<i2").tobytes()).decode()
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": audio}}
    camel_messages = [
        {"setupComplete": {}},
        {"serverContent": {"inputTranscription": {"text": "hello "}}},
        {"serverContent": {"inputTranscription": {"text": "there"}}},
        {"serverContent": {"outputTranscription": {"text": "Hi"}, "modelTurn": {"parts": [part]}}},
        {"serverContent": {"turnComplete": True}},
        {"sessionResumptionUpdate": {"newHandle": "h1", "resumable": True}},
        {"toolCall": {"functionCalls": [{"id": "f1", "name": "get_x", "args": {"a_b": 1}}]}},
        {"usageMetadata": {"totalTokenCount": 3}},
        {"somethingNew": {}},
    ]
    for spelling in (lambda v: v, _snake):
        c = codec()
        events = [e for msg in camel_messages for e in c.receive(json.dumps(spelling(msg)))]
        assert [type(e).__name__ for e in events] == [
            "Ready", "InputCommitted", "UserTranscript", "ResponseStarted", "TextDelta",
            "AudioDelta", "ResponseDone", "Resumption", "ResponseStarted", "CallDelta",
            "ResponseDone", "Unknown",
        ]  # fmt: skip
        assert events[2] == b.UserTranscript("gemini_user_1", "hello there")
        assert isinstance(events[5], b.AudioDelta) and events[5].audio.tolist() == [7, -7]
        assert events[7] == b.Resumption("h1") and c.resumption_handle == "h1"
        assert events[9] == b.CallDelta("gemini_resp_2", 0, "f1", "get_x", '{"a_b": 1}')


def test_interrupted_is_a_barge_in_and_ends_the_turn() -> None:
    c = codec()
    audio = base64.b64encode(b"\x01\x00").decode()
    part = {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": audio}}
    c.receive(json.dumps({"serverContent": {"modelTurn": {"parts": [part]}}}))
    events = c.receive(json.dumps({"serverContent": {"interrupted": True}}))
    assert events == [
        b.SpeechStarted("gemini_user_1"),
        b.Interrupted("gemini_resp_1"),
        b.ResponseDone("gemini_resp_1", "cancelled", "turn_detected"),
    ]


def test_tool_outputs_go_back_as_tool_responses() -> None:
    c = codec()
    c.receive(json.dumps({"toolCall": {"functionCalls": [{"id": "f1", "name": "get_x"}]}}))
    output = Item("o", "tool", '{"x": 1}', type="function_call_output", call_id="f1")
    (sent,) = map(json.loads, c.add_item(output))
    assert sent == {
        "toolResponse": {"functionResponses": [{"id": "f1", "name": "get_x", "response": {"x": 1}}]}
    }
    assert c.respond(None) == []  # (it goes on by itself after a tool's output)
    assert json.loads(c.respond(None)[0]) == {"clientContent": {"turnComplete": True}}


@pytest.mark.parametrize(
    "data",
    [
        "nope",
        "[]",
        '{"serverContent": 3}',
        '{"serverContent": {"modelTurn": {"parts": [{"inlineData": {"mimeType": "audio/pcm;rate=16000", "data": ""}}]}}}',
        '{"toolCall": {"functionCalls": []}}',
    ],
)
def test_malformed_messages_are_a_failure(data: str) -> None:
    with pytest.raises(b.UpstreamFailure, match="malformed message"):
        codec().receive(data)


def test_camel_leaves_function_data_alone() -> None:
    assert camel({"tool_call": {"function_calls": [{"args": {"a_b": {"c_d": 1}}}]}}) == {
        "toolCall": {"functionCalls": [{"args": {"a_b": {"c_d": 1}}}]}
    }


def _snake(value: object) -> object:
    from .gemini_server import snake

    return snake(value)


# ---------------------------------------------------------------- against the test server


def gemini_front(url: str, **upstream: object) -> Front:
    front = Front(fake_engines(["local"], ["Local answer."], 20), url, **upstream)  # type: ignore[arg-type]
    front.handoff.upstreams = {"gemini-live": front.upstream}
    front.session.open_remote = opener(front.handoff)
    return front


async def to_gemini(front: Front) -> None:
    front.session.switch_engine("gemini-live")
    relay = front.session.remote
    assert relay is not None
    async with asyncio.timeout(20):
        await relay.ready.wait()  # type: ignore[attr-defined]


@pytest.mark.parametrize("snake", [False, True])
async def test_a_spoken_turn_through_gemini(snake: bool) -> None:
    script = Script(heard=["what time is it"], replies=["It is noon now."], ms_per_word=100)
    async with GeminiLiveServer(script, snake=snake) as server, gemini_front(server.url) as front:
        await to_gemini(front)
        front.session.append_audio(speech(), 24_000)
        (done,) = await front.until(front.done, "the reply")
    assert done.status == "completed"
    assert front.texts() == [("user", "what time is it"), ("assistant", "It is noon now.")]
    audio = np.concatenate([e.audio for e in front.of(m.ReplyAudio)])
    assert len(audio) >= 4 * 0.1 * 24_000 * 0.9 and np.abs(audio).max() > 1000
    setup = server.setups[0]
    assert setup["systemInstruction"]["parts"][0]["text"] == SessionSettings().instructions
    kinds = [next(iter(msg)) for msg in server.received]
    assert kinds[0] == "setup" and "realtimeInput" in kinds


async def test_interrupted_flushes_playback_at_once() -> None:
    script = Script(heard=["tell me a story", "stop"], replies=[" ".join(["word"] * 40), "Okay."])
    async with GeminiLiveServer(script) as server, gemini_front(server.url) as front:
        await to_gemini(front)
        front.session.append_audio(speech(), 24_000)
        await front.until(lambda: len(front.of(m.ReplyAudio)) >= 20, "some of the story")
        front.session.append_audio(speech(0.6), 24_000)
        first, second = await front.until(lambda: front.done(2), "the next reply")
    assert first.status == "cancelled" and first.reason == "turn_detected"
    assert first.item is not None and 0 < len(first.item.text.split()) < 40
    assert second.item is not None and second.item.text == "Okay."
    assert front.texts()[-2] == ("user", "stop")


async def test_a_tool_call_and_its_response_through_gemini() -> None:
    script = Script(
        heard=["weather in oslo"], replies=[Call("weather", {"city": "Oslo"}), "Sunny."]
    )
    settings = SessionSettings()
    settings.generation.tools = [ToolSpec("weather", "The weather", {"type": "object"})]
    async with GeminiLiveServer(script) as server, gemini_front(server.url) as front:
        front.session.settings = settings
        await to_gemini(front)
        front.session.append_audio(speech(), 24_000)
        (done,) = await front.until(front.done, "the call")
        (call,) = done.calls
        assert (call.name, json.loads(call.arguments)) == ("weather", {"city": "Oslo"})
        output = Item("o1", "tool", '{"sky": "clear"}', type="function_call_output",
                      call_id=call.call_id)  # fmt: skip
        front.session.add_item(output)
        front.session.create_response()
        await front.until(lambda: front.done(2), "the answer")
    responses = [msg["toolResponse"] for msg in server.received if "toolResponse" in msg]
    assert responses == [
        {
            "functionResponses": [
                {"id": call.call_id, "name": "weather", "response": {"sky": "clear"}}
            ]
        }
    ]
    assert server.setups[0]["tools"][0]["functionDeclarations"][0]["name"] == "weather"
    assert front.texts()[-1] == ("assistant", "Sunny.")


async def test_this_servers_turn_detection_with_gemini() -> None:
    script = Script(heard=["from our side"], replies=["Heard you."], ms_per_word=50)
    async with (
        GeminiLiveServer(script) as server,
        gemini_front(server.url, turn_detection="server") as front,
    ):
        await to_gemini(front)
        front.session.append_audio(speech(), 24_000)
        (done,) = await front.until(front.done, "the reply")
    assert done.item is not None and done.item.text == "Heard you."
    assert server.setups[0]["realtimeInputConfig"]["automaticActivityDetection"]["disabled"]
    inputs = [next(iter(msg["realtimeInput"])) for msg in server.received if "realtimeInput" in msg]
    assert inputs[0] == "activityStart" and inputs[-1] == "activityEnd"
    # this server's recognizer wrote the caller's words; Gemini answered the audio
    assert front.texts()[0] == ("user", "local")


# ---------------------------------------------------------------- the official SDK


async def test_the_official_sdk_speaks_with_the_test_server(tmp_path: Path) -> None:
    from google import genai
    from google.genai import types

    context, cert = self_signed(tmp_path)
    script = Script(heard=["hello gemini"], replies=[Call("lookup", {"q": "x"}), "Found it."])
    async with GeminiLiveServer(script, tls=context) as server:
        trust = ssl.create_default_context(cafile=str(cert))
        client = genai.Client(
            api_key="AIza-test",
            http_options=types.HttpOptions(
                base_url=f"https://127.0.0.1:{server.port}", async_client_args={"ssl": trust}
            ),
        )
        config = types.LiveConnectConfig(
            response_modalities=[types.Modality.AUDIO],
            system_instruction="Be brief.",
            input_audio_transcription=types.AudioTranscriptionConfig(),
            output_audio_transcription=types.AudioTranscriptionConfig(),
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup")])],
        )
        heard, said, audio, calls = "", "", bytearray(), []
        async with asyncio.timeout(30):
            async with client.aio.live.connect(model="gemini-live-test", config=config) as live:
                pcm = np.concatenate([tone(0.6, 16_000), silence(0.6, 16_000)])
                await live.send_realtime_input(
                    audio=types.Blob(
                        data=pcm.astype("<i2").tobytes(), mime_type="audio/pcm;rate=16000"
                    )
                )
                async for message in live.receive():  # the first turn: a call
                    content = message.server_content
                    if content and content.input_transcription:
                        heard += content.input_transcription.text or ""
                    if message.tool_call:
                        calls += message.tool_call.function_calls or []
                        break
                (call,) = calls
                await live.send_tool_response(
                    function_responses=[
                        types.FunctionResponse(id=call.id, name=call.name, response={"ok": 1})
                    ]
                )
                async for message in live.receive():  # the answer (the SDK stops at its end)
                    content = message.server_content
                    if content and content.output_transcription:
                        said += content.output_transcription.text or ""
                    if content and content.model_turn:
                        for part in content.model_turn.parts or []:
                            audio += part.inline_data.data if part.inline_data else b""
                    complete = bool(content and content.turn_complete)
                async for message in live.receive():  # then the resumption handle
                    if message.session_resumption_update:
                        handle = message.session_resumption_update.new_handle
                        break
    assert heard == "hello gemini" and server.keys == ["AIza-test"]
    assert (call.name, call.args) == ("lookup", {"q": "x"})
    assert said.split() == ["Found", "it."] and complete and handle == "handle-2"
    assert len(audio) == 2 * 2 * int(0.2 * 24_000)  # two words of 200 ms, 16-bit
    setup = server.setups[0]
    assert setup["model"] == "models/gemini-live-test"
    assert setup["tools"][0]["functionDeclarations"][0]["name"] == "lookup"
    assert setup["systemInstruction"]["parts"][0]["text"] == "Be brief."
    responses = [msg["toolResponse"] for msg in server.received if "toolResponse" in msg]
    assert responses[0]["functionResponses"][0] == {
        "id": call.id, "name": "lookup", "response": {"ok": 1}
    }  # fmt: skip
    # what the SDK sent, our codec sends the same way: the test server took both
    ours = GeminiLiveCodec(b.UpstreamSettings("x")).setup(b.SessionSetup("Be brief."))
    assert set(json.loads(ours[0])["setup"]) >= {"model", "systemInstruction"}


async def test_a_dropped_connection_is_resumed_with_the_handle() -> None:
    script = Script(heard=["one", "two"], replies=["First.", "Second."], ms_per_word=50)
    async with GeminiLiveServer(script) as server, gemini_front(server.url) as front:
        server.drop_after = 1
        await to_gemini(front)
        front.session.append_audio(speech(), 24_000)
        await front.until(front.done, "the first reply")
        relay = front.session.remote
        assert relay is not None
        async with asyncio.timeout(20):
            await server.resumed.wait()  # (the drop, then the new connection's setup)
            await relay.ready.wait()  # type: ignore[attr-defined]
        front.session.append_audio(speech(), 24_000)
        await front.until(lambda: front.done(2), "the second reply")
    assert server.setups[1]["sessionResumption"] == {"handle": "handle-1"}
    assert front.session.engine == "gemini-live" and not front.errors("upstream_failed")
    assert front.texts() == [
        ("user", "one"), ("assistant", "First."), ("user", "two"), ("assistant", "Second.")
    ]  # fmt: skip
    # the resumed session has the conversation: the history is not sent again
    assert not any("clientContent" in msg for msg in server.received)
