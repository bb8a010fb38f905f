"""End to end through ``/v1/realtime`` with the official ``openai`` SDK as the client and the real
embedded models. The caller's speech is made at test time by espeak-ng (not the agent's voice)
and streamed in real time; every server event is validated strictly against the SDK's models."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from pipeline.audio import resample
from pipeline.engines import Engines
from transports import g711
from voice.server import VoiceServer

from .conftest import espeak
from .realtime_client import Caller
from .test_engines import wer

pytestmark = [pytest.mark.e2e, pytest.mark.models]
QUESTION = "Who painted the Mona Lisa?"
PHONE_QUESTION = "Good morning, can you hear me?"
TURN_TIMEOUT = 90.0


def words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'").lower() for w in text.split() if w.strip(".,;:!?\"'")]


async def test_a_spoken_turn_through_the_sdk(server: VoiceServer, engines: Engines) -> None:
    async with Caller(server.port) as caller:  # type: ignore[arg-type]
        caller.say(espeak(QUESTION, rate=24_000))
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "response.done")
        await caller.wait_for(lambda: caller.of("x.voice.turn.metrics"), 10, "the metrics event")

    (created,) = caller.of("session.created")
    assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    transcript = caller.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(QUESTION, transcript) <= 0.2, transcript
    response = done["response"]
    assert response["status"] == "completed"
    reply_text = response["output"][0]["content"][0]["transcript"]
    assert reply_text.strip()
    deltas = "".join(e["delta"] for e in caller.of("response.output_audio_transcript.delta"))
    assert words(deltas) == words(reply_text)

    audio = caller.audio_of(response["id"])
    assert len(audio) > 0.5 * 24_000 and np.abs(audio).max() > 1000
    heard = await engines.asr.transcribe(resample(audio, 24_000, 16_000))
    assert heard.strip(), "the reply audio should be speech"

    (metrics,) = caller.of("x.voice.turn.metrics")
    assert metrics["response_id"] == response["id"]
    marks = metrics["metrics_ms"]
    assert all(isinstance(marks[k], float | int) for k in marks), marks
    # the LLM may start before the turn is confirmed (speculation), but nothing is heard before
    assert marks["asr_done"] <= marks["llm_first_token"] <= marks["tts_first_audio"]
    assert max(marks["turn_end"], marks["tts_first_audio"]) <= marks["first_audio_sent"]
    expected_order = [
        "session.created", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
        "conversation.item.input_audio_transcription.completed", "response.created",
    ]  # fmt: skip
    assert caller.types()[: len(expected_order)] == expected_order


async def test_barge_in_end_to_end(server: VoiceServer, engines: Engines) -> None:
    async with Caller(server.port) as caller:  # type: ignore[arg-type]
        await caller.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "You are a storyteller. Always tell long, detailed stories of many sentences.",
                },
            }
        )
        caller.say(espeak("Please tell me a long story about a brave little dragon.", rate=24_000))
        created = await caller.wait_for(
            lambda: caller.of("response.created"), TURN_TIMEOUT, "a response"
        )
        first_id = created[0]["response"]["id"]
        # let a second of the reply play, then cut in
        await caller.wait_for(
            lambda: len(caller.audio_of(first_id)) >= 24_000, TURN_TIMEOUT, "1 s of reply audio"
        )
        interrupted_at = len(caller.events)
        caller.say(espeak("Stop, wait a moment, I have a question.", rate=24_000))
        await caller.wait_for(lambda: caller.response_done(1), 30, "the first response to end")
        done = caller.of("response.done")[0]["response"]
        assert done["id"] == first_id
        assert done["status"] == "cancelled", done
        assert done["status_details"]["reason"] == "turn_detected"

        # its audio stopped: nothing of it after response.done, and little after the barge-in began
        index = next(i for i, (_, e) in enumerate(caller.events) if e["type"] == "response.done")
        later = [e for _, e in caller.events[index:] if e.get("response_id") == first_id]
        assert not [e for e in later if e["type"] == "response.output_audio.delta"]
        after_cut_in = [
            e for _, e in caller.events[interrupted_at:]
            if e["type"] == "response.output_audio.delta" and e["response_id"] == first_id
        ]  # fmt: skip
        # speech onset + 192 ms of speech + one window, plus what was in flight: well under 1 s
        assert len(after_cut_in) * 0.02 < 1.0

        # the item keeps only what was heard: a prefix of what was generated
        heard = words(done["output"][0]["content"][0]["transcript"])
        generated = words("".join(
            e["delta"] for e in caller.of("response.output_audio_transcript.delta")
            if e["response_id"] == first_id
        ))  # fmt: skip
        assert heard == generated[: len(heard)]
        assert len(caller.audio_of(first_id)) < 24_000 * 60

        # the interruption is itself a turn, and it is answered normally
        await caller.wait_for(lambda: caller.response_done(2), TURN_TIMEOUT, "the next response")
        second = caller.of("response.done")[1]["response"]
        # a storyteller may run into the token limit: that ends "incomplete", as OpenAI says
        assert second["status"] == "completed" or second["status_details"] == {
            "type": "incomplete",
            "reason": "max_output_tokens",
        }
        assert len(caller.audio_of(second["id"])) > 0


async def test_g711_mulaw_both_ways(server: VoiceServer) -> None:
    caller = Caller(server.port, rate=8000, encode=g711.ulaw_encode)  # type: ignore[arg-type]
    async with caller:
        await caller.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"format": {"type": "audio/pcmu"}},
                        "output": {"format": {"type": "audio/pcmu"}},
                    },
                },
            }
        )
        await caller.wait_for(lambda: caller.of("session.updated"), 10, "session.updated")
        # 8 kHz telephone-band speech is harder for tiny.en than wideband; this phrase is
        # transcribed exactly whatever the turn's boundaries (checked offline with several cuts)
        caller.say(espeak(PHONE_QUESTION, rate=8000, voice="en-us", wpm=140))
        (done,) = await caller.wait_for(caller.response_done, TURN_TIMEOUT, "response.done")
    transcript = caller.of("conversation.item.input_audio_transcription.completed")[0]["transcript"]
    assert wer(PHONE_QUESTION, transcript) <= 0.2, transcript
    deltas = [e for e in caller.of("response.output_audio.delta")]
    assert {len(e["delta"]) for e in deltas[:-1]} == {216}  # 160 bytes = 20 ms of 8 kHz μ-law
    audio = caller.audio_of(done["response"]["id"], g711.ulaw_decode)
    assert np.abs(audio).max() > 1000


async def _raw(port: int):  # type: ignore[no-untyped-def]
    return websockets.connect(
        f"ws://127.0.0.1:{port}/v1/realtime",
        max_size=None,
        additional_headers={"Authorization": "Bearer x"},
    )


async def _next(ws, kind: str, within: float = 10.0) -> dict:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event  # type: ignore[no-any-return]


async def test_bad_input_on_the_wire_leaves_other_sessions_untouched(server: VoiceServer) -> None:
    limit = server.config.server.max_event_bytes
    async with Caller(server.port) as bystander, await _raw(server.port) as ws:  # type: ignore[arg-type]
        await _next(ws, "session.created")
        await ws.send("{this is not json")
        assert (await _next(ws, "error"))["error"]["code"] == "invalid_json"
        await ws.send(b"\x00\x01binary")
        assert (await _next(ws, "error"))["error"]["code"] == "invalid_frame"
        await ws.send(
            json.dumps({"type": "input_audio_buffer.append", "audio": "AAEC"})
        )  # 3 bytes: odd-length PCM16
        assert (await _next(ws, "error"))["error"]["code"] == "invalid_audio"
        await ws.send(
            json.dumps({"type": "input_audio_buffer.append", "audio": "x" * (limit + 10)})
        )
        assert (await _next(ws, "error"))["error"]["code"] == "message_too_large"
        burst = np.zeros(24_000, np.int16).tobytes()
        for _ in range(12):  # 12 s of audio at once: faster than real time
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": __import__("base64").b64encode(burst).decode(),
                    }
                )
            )
        assert (await _next(ws, "error"))["error"]["code"] == "input_audio_rate_exceeded"
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "event_id": "e1",
                    "session": {"instructions": "still here"},
                }
            )
        )
        assert (await _next(ws, "session.updated"))["session"]["instructions"] == "still here"
        # a frame past the transport limit closes this connection with 1009 …
        await ws.send("x" * (server.config.server.max_frame_bytes + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await _next(ws, "never")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        # … and the other session is untouched
        await bystander.send(
            {"type": "session.update", "session": {"type": "realtime", "instructions": "ok"}}
        )
        await bystander.wait_for(lambda: bystander.of("session.updated"), 10, "session.updated")
    assert not bystander.of("error")


async def test_a_client_that_vanishes_mid_sentence_loses_nothing(server: VoiceServer) -> None:
    async with await _raw(server.port) as ws:
        created = await _next(ws, "session.created")
        del created
        speech = espeak("I would like to book a table for two people tonight.", rate=24_000)
        import base64

        for start in range(0, len(speech), 480):
            chunk = base64.b64encode(speech[start : start + 480].tobytes()).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
        for _ in range(40):
            await ws.send(
                json.dumps(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(bytes(960)).decode(),
                    }
                )
            )
        transcript = await _next(ws, "conversation.item.input_audio_transcription.completed", 60)
        session_id = next(iter(s for s in server.sessions))
        ws.transport.abort()  # gone, mid-reply, without a close frame
    async with asyncio.timeout(30):
        record = await server.wait_ended(session_id)
    assert record["items"][0]["text"] == transcript["transcript"]
    assert not server.sessions or session_id not in server.sessions


async def test_sessions_beyond_the_limit_are_refused(server: VoiceServer) -> None:
    limit = server.config.server.max_sessions
    server.config.server.max_sessions = len(server.sessions)
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with await _raw(server.port):
                pass
        assert refused.value.response.status_code == 503
    finally:
        server.config.server.max_sessions = limit
