"""The OpenAI Realtime hand-off: the codec on JSON, then a session relayed to this server's own
``/v1/realtime`` (fake engines) on loopback: audio, transcripts, barge-in truncation, a tool
call, the engine chosen by setting and switched mid-call with the history intact."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from pipeline import messages as m
from pipeline.audio import pcm16_to_bytes
from pipeline.context import Item
from pipeline.engines.tools import ToolSpec
from pipeline.errors import ProtocolError
from pipeline.handoff import base as b
from pipeline.handoff.openai_realtime import OpenAiRealtimeCodec, history_item
from pipeline.session import SessionSettings
from transports.realtime.config import RealtimeConfig
from voice.server import VoiceServer

from .fakes import call, fake_engines
from .handoff_peers import Front, frame, peer_server, speech
from .realtime_client import Caller

# ---------------------------------------------------------------- the codec, sans I/O


def codec() -> OpenAiRealtimeCodec:
    return OpenAiRealtimeCodec(b.UpstreamSettings("wss://up.example/v1/realtime", key="sk-x"))


def test_setup_tells_instructions_tools_turn_detection_and_the_history() -> None:
    c = OpenAiRealtimeCodec(
        b.UpstreamSettings("wss://up/v1/realtime", model="gpt-realtime", voice="marin")
    )
    history = [
        Item("i1", "user", "What is the weather?", audio=True),
        Item("i2", "assistant", type="function_call", call_id="c1", name="weather"),
        Item("i3", "tool", '{"sky": "blue"}', type="function_call_output", call_id="c1"),
        Item("i4", "assistant", "It is blue.", audio=True),
        Item("i5", "assistant", "", status="in_progress"),
    ]
    setup = b.SessionSetup(
        "Be brief.", [ToolSpec("weather")], "weather", history=history, upstream_vad=False
    )
    frames = [json.loads(f) for f in c.setup(setup)]
    assert c.url() == "wss://up/v1/realtime?model=gpt-realtime" and c.headers() == {}
    update = frames[-1]["session"]
    assert update["instructions"] == "Be brief." and update["tools"][0]["name"] == "weather"
    assert update["tool_choice"] == {"type": "function", "name": "weather"}
    assert update["audio"]["input"]["turn_detection"] is None
    assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24_000}
    assert update["audio"]["output"]["voice"] == "marin"
    items = [f["item"] for f in frames[:-1]]
    assert [f["type"] for f in frames] == ["conversation.item.create"] * 4 + ["session.update"]
    assert items[0] == {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "What is the weather?"}],
    }
    assert items[1] == {
        "type": "function_call",
        "call_id": "c1",
        "name": "weather",
        "arguments": "",
    }
    assert items[2]["output"] == '{"sky": "blue"}'
    assert items[3]["content"] == [{"type": "output_text", "text": "It is blue."}]


def test_requests_are_the_realtime_client_events() -> None:
    c = codec()
    pcm = np.array([1, -2, 300], dtype=np.int16)
    (append,) = map(json.loads, c.audio(pcm16_to_bytes(pcm)))
    assert base64.b64decode(append["audio"]) == b"\x01\x00\xfe\xff\x2c\x01"
    assert c.headers() == {"Authorization": "Bearer sk-x"}
    assert json.loads(c.truncate("item_9", 1234)[0]) == {
        "type": "conversation.item.truncate",
        "item_id": "item_9",
        "content_index": 0,
        "audio_end_ms": 1234,
    }
    assert json.loads(c.respond(None)[0]) == {"type": "response.create", "response": {}}
    assert json.loads(c.respond("Shout.")[0])["response"] == {"instructions": "Shout."}
    assert json.loads(c.respond(None, "none")[0])["response"] == {"tool_choice": "none"}
    assert json.loads(c.cancel("resp_1")[0]) == {"type": "response.cancel", "response_id": "resp_1"}
    assert history_item(Item("x", "user", "  ")) is None


def test_server_events_become_typed_events() -> None:
    c = codec()
    audio = base64.b64encode(b"\x01\x00\x02\x00").decode()
    events = [
        *c.receive(frame("session.created", session={})),
        *c.receive(frame("session.updated", session={})),
        *c.receive(frame("input_audio_buffer.speech_started", item_id="u1", audio_start_ms=40)),
        *c.receive(frame("input_audio_buffer.committed", item_id="u1", previous_item_id=None)),
        *c.receive(
            frame(
                "conversation.item.input_audio_transcription.completed",
                item_id="u1",
                content_index=0,
                transcript="hi",
            )
        ),
        *c.receive(frame("response.created", response={"id": "r1"})),
        *c.receive(
            frame("response.output_audio.delta", response_id="r1", item_id="a1", delta=audio)
        ),
        *c.receive(frame("response.audio.delta", response_id="r1", item_id="a1", delta=audio)),
        *c.receive(
            frame(
                "response.output_audio_transcript.delta", response_id="r1", item_id="a1", delta="Hi"
            )
        ),
        *c.receive(
            frame(
                "response.output_item.added",
                response_id="r1",
                output_index=1,
                item={"type": "function_call", "call_id": "c1", "name": "f", "arguments": ""},
            )
        ),
        *c.receive(
            frame(
                "response.function_call_arguments.delta",
                response_id="r1",
                item_id="f1",
                output_index=1,
                call_id="c1",
                delta="{}",
            )
        ),
        *c.receive(
            frame(
                "response.done",
                response={
                    "id": "r1",
                    "status": "incomplete",
                    "usage": {"output_tokens": 7},
                    "status_details": {"reason": "max_output_tokens"},
                },
            )
        ),
        *c.receive(frame("rate_limits.updated", rate_limits=[])),
        *c.receive(frame("error", error={"message": "nope", "code": "bad"})),
        *c.receive(frame("response.brand_new_thing")),
    ]
    assert [type(e).__name__ for e in events] == [
        "Ready", "SpeechStarted", "InputCommitted", "UserTranscript", "ResponseStarted",
        "AudioDelta", "AudioDelta", "TextDelta", "CallDelta", "CallDelta", "ResponseDone",
        "UpstreamError", "Unknown",
    ]  # fmt: skip
    assert events[1] == b.SpeechStarted("u1", 40)
    assert events[3] == b.UserTranscript("u1", "hi")
    assert isinstance(events[5], b.AudioDelta) and events[5].audio.tolist() == [1, 2]
    assert events[8] == b.CallDelta("r1", 1, "c1", "f", "")
    assert events[10] == b.ResponseDone("r1", "incomplete", "max_output_tokens", 0, 7)
    assert events[12] == b.Unknown("response.brand_new_thing")


@pytest.mark.parametrize(
    "data",
    ["not json", "[1]", '{"no": "type"}', frame("response.created", response={})],
)
def test_malformed_frames_are_a_failure(data: str) -> None:
    with pytest.raises(b.UpstreamFailure, match="malformed message"):
        codec().receive(data)


def test_engines_are_refused_by_name() -> None:
    assert b.check_engine("gemini-live", "session.engine") == "gemini-live"
    with pytest.raises(ProtocolError, match="unknown engine 'gpt-9'") as info:
        b.check_engine("gpt-9", "session.engine")
    assert info.value.param == "session.engine"


def test_session_update_chooses_an_engine_by_name_or_by_model() -> None:
    config = RealtimeConfig(
        "voice-local", SessionSettings(), engines={"cascade": "", "openai-realtime": "gpt-x"}
    )
    config.apply_update({"engine": "openai-realtime"})
    assert config.settings.engine == "openai-realtime"
    config.apply_update({"engine": "cascade"})
    config.apply_update({"model": "gpt-x"})
    assert config.settings.engine == "openai-realtime"
    with pytest.raises(ProtocolError, match=r"session\.engine 'gemini-live' is not served") as info:
        config.apply_update({"engine": "gemini-live"})
    assert info.value.param == "session.engine" and config.settings.engine == "openai-realtime"


# ---------------------------------------------------------------- against this server, on loopback


async def test_a_spoken_turn_relayed_to_the_upstream() -> None:
    async with peer_server(fake_engines(["hello remote"], ["Remote says hi there."], 50)) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(fake_engines(["local"], ["Local answer."]), url) as front:
            await front.remote()
            front.session.append_audio(speech(), 24_000)
            (done,) = await front.until(front.done, "a reply")
            (upstream,) = peer.sessions.values()

    assert done.status == "completed" and done.item is not None
    assert front.texts() == [("user", "hello remote"), ("assistant", "Remote says hi there.")]
    order = ["SpeechStarted", "SpeechStopped", "InputCommitted", "ItemAdded", "UserTranscript",
             "ReplyStarted", "ReplyText", "ReplyDone", "TurnMetrics"]  # fmt: skip
    assert front.types()[: len(order)] == order
    audio = np.concatenate([e.audio for e in front.of(m.ReplyAudio)])
    assert len(audio) >= 4 * 0.05 * 24_000 and np.abs(audio).max() > 1000  # 4 words of 50 ms
    assert "".join(e.delta for e in front.of(m.ReplyText)) == "Remote says hi there."
    (metrics,) = front.of(m.TurnMetrics)
    marks = metrics.marks
    # counted from when the audio in which the upstream heard the speech end was sent (here
    # all of it at once), before the turn's end reached this server
    assert marks["speech_end"] == 0.0 and marks["turn_end"] > 0  # type: ignore[operator]
    assert marks["asr_done"] is not None
    assert marks["tts_first_audio"] <= marks["first_audio_sent"]  # type: ignore[operator]
    assert metrics.marks["overhead"] is not None
    assert [i.text for i in upstream.conversation.items] == [
        "hello remote",
        "Remote says hi there.",
    ]


async def test_barge_in_truncates_the_upstream_item_to_what_was_heard() -> None:
    story = " ".join(["word"] * 60)  # 60 words of 100 ms: six seconds of reply
    engines = fake_engines(["tell me a story", "stop"], [story, "Stopped."], 100)
    async with peer_server(engines) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(fake_engines(["x"], ["x"]), url) as front:
            await front.remote()
            front.session.append_audio(speech(), 24_000)
            await front.until(lambda: len(front.of(m.ReplyAudio)) >= 25, "half a second of reply")
            front.session.append_audio(speech(0.6), 24_000)  # the caller cuts in
            (first, second) = await front.until(lambda: front.done(2), "the second reply")
            (upstream,) = peer.sessions.values()
            cut = upstream.conversation.items[1]

    assert first.status == "cancelled" and first.reason == "turn_detected"
    assert second.status == "completed"
    heard = first.item
    assert heard is not None and heard.status == "incomplete"
    assert 0 < len(heard.text.split()) < 60
    # the upstream keeps what the caller heard: its item cut at the front's played position
    assert cut.role == "assistant" and cut.status == "incomplete"
    assert 0 < cut.audio_ms <= heard.audio_ms + 100 and len(cut.text.split()) < 60
    assert front.texts()[-2:] == [("user", "stop"), ("assistant", "Stopped.")]


async def test_a_tool_call_passes_through_and_its_output_goes_back() -> None:
    tool = ToolSpec("weather", "The weather", {"type": "object"})
    upstream_llm = fake_engines(["weather please"], [call("weather", '{"city": "Oslo"}'), "Sunny."])
    async with peer_server(upstream_llm) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = SessionSettings()
        settings.generation.tools = [tool]
        async with Front(fake_engines(["x"], ["x"]), url, settings=settings) as front:
            await front.remote()
            front.session.append_audio(speech(), 24_000)
            (done,) = await front.until(front.done, "the call")
            (call_item,) = done.calls
            assert (call_item.name, call_item.arguments) == ("weather", '{"city": "Oslo"}')
            output = Item("out_1", "tool", '{"sky": "sunny"}', type="function_call_output",
                          call_id=call_item.call_id)  # fmt: skip
            front.session.add_item(output)
            front.session.create_response()
            await front.until(lambda: front.done(2), "the answer")

    seen = upstream_llm.llm.seen  # type: ignore[attr-defined]
    assert seen[0][-1].content == "weather please"
    assert seen[0][0].content == SessionSettings().instructions
    # the upstream's model got the call and its output, and its answer was relayed back
    assert seen[1][-1].role == "tool" and seen[1][-1].content == '{"sky": "sunny"}'
    assert front.texts()[-1] == ("assistant", "Sunny.")
    assert upstream_llm.llm.options[0].tools[0].name == "weather"  # type: ignore[attr-defined]


async def test_switch_cascade_remote_cascade_keeps_the_history() -> None:
    local = fake_engines(["local question", "back home"], ["Local answer.", "Home again."], 50)
    remote = fake_engines(["remote question"], ["Remote answer."], 50)
    async with peer_server(remote) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(local, url) as front:
            front.session.append_audio(speech(), 24_000)
            await front.until(front.done, "the cascade's reply")
            await front.remote()
            front.session.append_audio(speech(), 24_000)
            await front.until(lambda: front.done(2), "the remote reply")
            front.session.switch_engine("cascade")
            front.session.append_audio(speech(), 24_000)
            await front.until(lambda: front.done(3), "the cascade's reply again")

    remote_prompt = remote.llm.seen[0]  # type: ignore[attr-defined]
    assert [(x.role, x.content) for x in remote_prompt[1:]] == [
        ("user", "local question"),
        ("assistant", "Local answer."),
        ("user", "remote question"),
    ]
    local_prompt = local.llm.seen[-1]  # type: ignore[attr-defined]
    assert [(x.role, x.content) for x in local_prompt[1:]] == [
        ("user", "local question"),
        ("assistant", "Local answer."),
        ("user", "remote question"),
        ("assistant", "Remote answer."),
        ("user", "back home"),
    ]
    assert front.texts()[-1] == ("assistant", "Home again.")


async def test_the_server_offers_configured_engines_and_keeps_keys() -> None:
    async with peer_server(fake_engines(["up"], ["Up here."], 50)) as peer:
        front_url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with peer_server(
            fake_engines(["x"], ["x"]),
            **{"handoff.openai_url": front_url, "handoff.openai_key": "sk-secret"},
        ) as front:
            config = front.realtime_config(front.session_settings())
            assert config.engines == {"cascade": "", "openai-realtime": "gpt-realtime"}
            assert "sk-secret" not in json.dumps(config.describe())
            session = front.new_session()
            session.switch_engine("openai-realtime")
            assert session.remote is not None
            session.close("test over")


def test_the_server_refuses_an_engine_without_a_url() -> None:
    from pipeline.errors import ConfigError

    from .conftest import test_config

    config = test_config()
    config.handoff.engine = "openai-realtime"
    with pytest.raises(ConfigError, match="no URL"):
        VoiceServer(config, fake_engines(["x"], ["x"]))


async def test_this_servers_turn_detection_commits_each_turn_upstream() -> None:
    async with peer_server(fake_engines(["upstream heard"], ["Remote reply."], 50)) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        local = fake_engines(["local words"], ["never"], 50)
        async with Front(local, url, turn_detection="server") as front:
            await front.remote()
            front.session.append_audio(speech(), 24_000)
            (done,) = await front.until(front.done, "the reply")
            (upstream,) = peer.sessions.values()
            upstream_items = [(i.role, i.text) for i in upstream.conversation.items]
    assert done.status == "completed"
    # this server heard the turn (its VAD and recognizer), the upstream answered its audio
    assert front.texts() == [("user", "local words"), ("assistant", "Remote reply.")]
    assert upstream.settings.turn_detection is None
    assert upstream_items == [("user", "upstream heard"), ("assistant", "Remote reply.")]
    assert local.llm.seen == []  # type: ignore[attr-defined]


async def test_the_sdk_sees_a_relayed_turn_as_any_other() -> None:
    """The ``openai`` SDK as the front's client (every event validated against its models);
    the front relays to this server (fake engines) on loopback."""
    tool = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
    remote = fake_engines(["hello remote"], [call("weather", "{}"), "Remote says hi."], 50)
    async with peer_server(remote) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        settings = {"handoff.engine": "openai-realtime", "handoff.openai_url": url}
        async with (
            peer_server(fake_engines(["never"], ["Never."]), **settings) as front,
            Caller(front.port) as caller,  # type: ignore[arg-type]
        ):
            await caller.send({"type": "session.update", "session": {"tools": [tool]}})
            caller.say(speech(0.8)[: int(0.8 * 24_000)])
            (done,) = await caller.wait_for(caller.response_done, 20, "the call")
            (called,) = [o for o in done["response"]["output"] if o["type"] == "function_call"]
            output = {"type": "function_call_output", "call_id": called["call_id"], "output": "{}"}
            await caller.send({"type": "conversation.item.create", "item": output})
            await caller.send({"type": "response.create"})
            both = await caller.wait_for(lambda: caller.response_done(2), 20, "the answer")
            await caller.wait_for(lambda: caller.of("x.voice.turn.metrics")[1:], 10, "metrics")
    (heard,) = caller.of("conversation.item.input_audio_transcription.completed")
    assert heard["transcript"] == "hello remote" and called["name"] == "weather"
    answer = both[1]["response"]
    assert answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["transcript"] == "Remote says hi."
    assert len(caller.audio_of(answer["id"])) >= 3 * 0.05 * 24_000
    marks = caller.of("x.voice.turn.metrics")[1]["metrics_ms"]
    assert marks["first_audio_sent"] is not None and marks["overhead"] is not None
    assert remote.llm.seen[1][-1].role == "tool"  # type: ignore[attr-defined]
