"""Faults, injected deterministically: an engine or a server tool that raises or hangs for one
session, a client that vanishes mid-reply, a store whose disk is full or read-only, and a real
LLM endpoint killed while a reply streams. The affected session degrades (an ``error`` event, a
failed response or transcription, the next turn answered), every other session on the same
server is untouched, and the store keeps what it had.

Two sessions talk to one light server (fake engines, real sockets on loopback) at once; the fakes
fail only for the poisoned session (by its id) or the poisoned words ("boom" raises, "hang"
never answers). Hangs end at the server's timeouts, set to a fraction of a second.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from pipeline import messages as m
from pipeline.clock import VirtualClock
from pipeline.context import ChatMessage, Item
from pipeline.engines import Engines, GenerationOptions, LlmEvent, StreamEnd, ToolCallDelta
from pipeline.engines.llm_openai import OpenAiCompatibleLlm, RemoteLlmOptions
from pipeline.errors import EngineError
from pipeline.session import SessionSettings
from pipeline.tools import ToolRegistry, tool
from voice import models
from voice.server import VoiceServer
from voice.store import SessionStore
from voice.store.sqlite import SqliteBackend

from .conftest import test_config as base_config
from .fakes import LoudnessVad, ToneTts, silence, tone
from .harness import Harness
from .test_engines import _free_port, _wait_listening

Event = dict[str, Any]
LIMIT_S = 10.0
"""No step of a test here waits longer for the server (the fakes answer at once)."""
MS_PER_WORD = 40
"""Of the fake synthesizer's tone (the server plays replies in real time)."""


# ---------------------------------------------------------------- engines that fail on cue


async def _hang() -> None:
    await asyncio.Event().wait()


class PoisonedAsr:
    """Transcribes every session's audio as ``text``, but raises (``mode`` "raise") or never
    answers ("hang") for the sessions in ``poisoned``."""

    def __init__(self, text: str = "hello there", mode: str = "raise") -> None:
        self.text, self.mode = text, mode
        self.poisoned: set[str] = set()

    async def transcribe(self, audio: np.ndarray, *, owner: str = "") -> str:
        if owner in self.poisoned:
            if self.mode == "hang":
                await _hang()
            raise EngineError("the recognizer crashed", engine="asr")
        return self.text


class PoisonedTts(ToneTts):
    """Tones, except for text with "boom" (raises) or "hang" (never answers)."""

    async def synthesize(
        self, text: str, *, speed: float = 1.0, voice: str | None = None, due: float | None = None
    ) -> np.ndarray:
        if "boom" in text:
            raise EngineError("the synthesizer crashed", engine="tts")
        if "hang" in text:
            await _hang()
        return await super().synthesize(text, speed=speed, voice=voice, due=due)


class EchoLlm:
    """Answers "You said <the user's words>"; asked to "look up" something, calls ``lookup``
    with those words, then says what the lookup returned."""

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        last = messages[-1]
        if last.role == "tool":
            yield f"The lookup said {last.content}."
        elif "look up" in last.content and options.tools:
            arguments = json.dumps({"query": last.content})
            yield ToolCallDelta(0, "call_1", "lookup", arguments)
            yield StreamEnd("tool_calls", 10, 5)
        else:
            for word in f"You said {last.content}.".split(" "):
                yield word + " "


@tool(description="Looks something up.", timeout_s=0.3)
async def lookup(query: str) -> str:
    if "boom" in query:
        raise RuntimeError("the database is down")
    if "hang" in query:
        await _hang()
    return "found it"


def engines_with(asr: PoisonedAsr | None = None) -> Engines:
    tts = PoisonedTts(MS_PER_WORD)
    return Engines(vad=LoudnessVad(), asr=asr or PoisonedAsr(), llm=EchoLlm(), tts=tts)


@contextlib.asynccontextmanager
async def light_server(engines: Engines, **settings: Any) -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.limits.asr_timeout = 0.3
    config.tts.timeout = 0.3
    for key, value in settings.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    server = VoiceServer(config, engines, tools=ToolRegistry([lookup]))
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


# ---------------------------------------------------------------- a Realtime client, by hand


class Client:
    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws, self.session_id = ws, session_id
        self.events: list[Event] = []

    async def send(self, event: Event) -> None:
        await self.ws.send(json.dumps(event))

    async def until(self, check: Callable[[Event], bool], what: str) -> Event:
        async with asyncio.timeout(LIMIT_S):
            while True:
                event = json.loads(await self.ws.recv())
                self.events.append(event)
                if check(event):
                    return event
        raise AssertionError(what)  # (unreachable: the timeout raises)

    async def next(self, kind: str) -> Event:
        return await self.until(lambda e: e["type"] == kind, kind)

    async def say_text(self, text: str) -> Event:
        """A text turn and its reply; returns the reply's ``response.done``."""
        content = [{"type": "input_text", "text": text}]
        item = {"type": "message", "role": "user", "content": content}
        await self.send({"type": "conversation.item.create", "item": item})
        await self.send({"type": "response.create"})
        return await self.next("response.done")

    async def say_audio(self, seconds: float) -> Event:
        """A spoken turn, committed by hand; returns its transcription event (completed or
        failed)."""
        audio = base64.b64encode(tone(seconds, 24_000).tobytes()).decode()
        await self.send({"type": "input_audio_buffer.append", "audio": audio})
        await self.send({"type": "input_audio_buffer.commit"})
        prefix = "conversation.item.input_audio_transcription."
        return await self.until(
            lambda e: e["type"] in (prefix + "completed", prefix + "failed"), "a transcription"
        )

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e["type"] == kind]


@contextlib.asynccontextmanager
async def connect(server: VoiceServer) -> AsyncIterator[Client]:
    before = set(server.sessions)
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/v1/realtime") as ws:
        client = Client(ws, "")
        await client.next("session.created")
        (client.session_id,) = set(server.sessions) - before
        manual = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await client.send({"type": "session.update", "session": manual})
        await client.next("session.updated")
        yield client


async def stored(server: VoiceServer, session_id: str) -> dict[str, Any]:
    await asyncio.wait_for(server.wait_ended(session_id), LIMIT_S)
    store = server.store
    assert store is not None
    assert await asyncio.to_thread(store.flush)
    record = await asyncio.to_thread(store.get_session, session_id)
    assert record is not None
    return record


# ---------------------------------------------------------------- engines and tools failing


@pytest.mark.parametrize("mode", ["raise", "hang"])
async def test_a_recognizer_failing_for_one_session_fails_its_transcription_only(mode: str) -> None:
    asr = PoisonedAsr("hello there", mode)
    async with light_server(engines_with(asr)) as server:
        async with connect(server) as poisoned, connect(server) as bystander:
            asr.poisoned.add(poisoned.session_id)
            failed, completed = await asyncio.gather(
                poisoned.say_audio(0.5), bystander.say_audio(0.5)
            )
            assert failed["type"].endswith(".failed")
            assert failed["error"]["code"] == "asr_failed"
            reason = "timed out" if mode == "hang" else "the recognizer crashed"
            assert reason in failed["error"]["message"]
            assert completed["transcript"] == "hello there"
            # the poisoned session goes on: a text turn is answered
            done = await poisoned.say_text("still there?")
            assert done["response"]["status"] == "completed"
            assert len(poisoned.of("response.created")) == 1  # no apology: it has `error`
            assert not bystander.of("error")
        record = await stored(server, poisoned.session_id)
        assert [e["code"] for e in record["errors"]] == ["asr_failed"]
        assert [i["text"] for i in record["items"] if i["role"] == "user"] == ["", "still there?"]


@pytest.mark.parametrize("word", ["boom", "hang"])
async def test_a_synthesizer_failing_on_one_reply_fails_that_response_only(word: str) -> None:
    async with light_server(engines_with()) as server:
        async with connect(server) as poisoned, connect(server) as bystander:
            failed, done = await asyncio.gather(
                poisoned.say_text(f"say {word}"), bystander.say_text("say hello")
            )
            assert failed["response"]["status"] == "failed"
            (error,) = poisoned.of("error")
            assert error["error"]["code"] == "response_failed"
            reason = "no audio within 0.3 s" if word == "hang" else "the synthesizer crashed"
            assert reason in error["error"]["message"]
            assert done["response"]["status"] == "completed"
            assert bystander.of("response.output_audio.delta")
            again = await poisoned.say_text("and now?")  # the next turn is answered
            assert again["response"]["status"] == "completed"
            assert len(poisoned.of("response.created")) == 2  # no apology: it has `error`
            assert not bystander.of("error")
        record = await stored(server, poisoned.session_id)
        statuses = [r["status"] for r in record["responses"]]
        assert statuses == ["failed", "completed"]
        assert [e["code"] for e in record["errors"]] == ["response_failed"]


def _outputs(client: Client) -> list[str]:
    added = client.of("conversation.item.done")
    return [e["item"]["output"] for e in added if e["item"]["type"] == "function_call_output"]


@pytest.mark.parametrize("word", ["boom", "hang"])
async def test_a_server_tool_failing_for_one_session_is_an_error_its_model_reads(
    word: str,
) -> None:
    async with light_server(engines_with()) as server:
        async with connect(server) as poisoned, connect(server) as bystander:
            await asyncio.gather(
                poisoned.say_text(f"look up {word}"), bystander.say_text("look up the hours")
            )
            answers = await asyncio.gather(
                poisoned.next("response.done"), bystander.next("response.done")
            )
            assert [a["response"]["status"] for a in answers] == ["completed", "completed"]
            (output,) = _outputs(poisoned)
            expected = "did not finish within 0.3 s" if word == "hang" else "the database is down"
            assert expected in output and "error" in output
            said = answers[0]["response"]["output"][0]["content"][0]["transcript"]
            assert said.startswith("The lookup said") and expected in said
            assert _outputs(bystander) == ["found it"]
            assert not poisoned.of("error") and not bystander.of("error")
        record = await stored(server, poisoned.session_id)
        assert [c["name"] for c in record["tool_calls"]] == ["lookup"]
        assert expected in record["tool_calls"][0]["output"]


# ---------------------------------------------------------------- clients that go away


async def test_a_client_that_vanishes_mid_reply_leaves_the_others_alone() -> None:
    async with light_server(engines_with()) as server:
        async with connect(server) as bystander:
            async with connect(server) as gone:
                long = " ".join(["word"] * 60)
                content = [{"type": "input_text", "text": long}]
                item = {"type": "message", "role": "user", "content": content}
                await gone.send({"type": "conversation.item.create", "item": item})
                await gone.send({"type": "response.create"})
                await gone.next("response.output_audio.delta")  # the reply is being heard
                gone.ws.transport.abort()  # no close frame
            record = await stored(server, gone.session_id)
            assert record["close_reason"] == "client disconnected (close code 1006)"
            assert gone.session_id not in server.sessions
            (reply,) = record["responses"]
            assert reply["status"] == "cancelled"
            done = await bystander.say_text("are you there?")
            assert done["response"]["status"] == "completed"
            assert not bystander.of("error")
        await asyncio.wait_for(server.wait_ended(bystander.session_id), LIMIT_S)
        assert not server.sessions


# ---------------------------------------------------------------- the store's disk


class Refuses(SqliteBackend):
    """A SQLite store whose disk turns read-only (or full) once ``broken`` is set."""

    def __init__(self, path: Path, error: str) -> None:
        super().__init__(path)
        self.error = error
        self.broken = False

    def _connect(self, *, readonly: bool) -> Any:
        conn = super()._connect(readonly=readonly)
        return conn if readonly else _Failing(conn, self)


class _Failing:
    def __init__(self, conn: sqlite3.Connection, backend: Refuses) -> None:
        self._conn, self._backend = conn, backend

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name not in ("execute", "executemany", "commit") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._backend.broken:
                raise sqlite3.OperationalError(self._backend.error)
            return attr(*args, **kwargs)

        return call


@pytest.mark.parametrize(
    "error", ["attempt to write a readonly database", "database or disk is full"]
)
async def test_a_store_that_can_no_longer_write_holds_up_no_session(
    error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Refuses(tmp_path / "sessions.db", error)
    monkeypatch.setattr(
        "voice.server.open_store", lambda *a, **k: SessionStore(backend, max_queued=1000)
    )
    async with light_server(engines_with()) as server:
        async with connect(server) as client:
            first = await client.say_text("first")
            store = server.store
            assert store is not None and await asyncio.to_thread(store.flush)
            backend.broken = True
            second = await client.say_text("second")
            assert first["response"]["status"] == second["response"]["status"] == "completed"
            assert client.of("response.output_audio.delta") and not client.of("error")
        await asyncio.wait_for(server.wait_ended(client.session_id), LIMIT_S)
        assert await asyncio.to_thread(store.flush)
        assert store.stats.failed > 0 and error in caplog.text
        backend.broken = False
        record = await asyncio.to_thread(store.get_session, client.session_id)
    assert record is not None  # what was written before stays
    texts = [(i["role"], i["text"]) for i in record["items"]]
    assert texts[:2] == [("user", "first"), ("assistant", "You said first.")]


# ---------------------------------------------------------------- an LLM endpoint killed


class LlamaServer:
    """``python -m llama_cpp.server`` on the bundled GGUF, on one port; killed and started again."""

    def __init__(self, log: Path) -> None:
        self.port, self.log = _free_port(), log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", str(models.smollm2_gguf()),
                 "--host", "127.0.0.1", "--port", str(self.port), "--n_threads", "1",
                 "--n_threads_batch", "1", "--n_ctx", "1024", "--model_alias", "smollm2"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_listening(self.proc, self.port, self.log, timeout=120.0)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def llama(tmp_path: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path / "llama.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


class KillsOnFirstText:
    """The remote LLM, and the endpoint killed as soon as the first words of a reply arrive."""

    def __init__(self, llm: OpenAiCompatibleLlm, server: LlamaServer) -> None:
        self.llm, self.server, self.armed = llm, server, True

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        async for event in self.llm.stream(messages, options):
            if self.armed and isinstance(event, str) and event.strip():
                self.armed = False
                await asyncio.to_thread(self.server.kill)
            yield event


@pytest.mark.models
async def test_an_llm_endpoint_killed_mid_reply_fails_that_response_and_the_session_goes_on(
    llama: LlamaServer,
) -> None:
    remote = OpenAiCompatibleLlm(RemoteLlmOptions(base_url=llama.url, model="smollm2", n_ctx=1024))
    engines = engines_with()
    engines.llm = KillsOnFirstText(remote, llama)
    settings = SessionSettings(turn_detection=None, generation=GenerationOptions(max_tokens=200))

    async def ask(h: Harness, text: str) -> m.ReplyDone:
        before = len(h.of(m.ReplyDone))
        h.session.add_item(Item(f"item_{before}", "user", text=text))
        h.session.create_response()
        async with asyncio.timeout(120):
            while len(h.of(m.ReplyDone)) == before:
                await h.feed(silence(0.02))
                await asyncio.sleep(0.01)  # real time for the endpoint (the clock is virtual)
        return h.of(m.ReplyDone)[-1]

    try:
        async with Harness(engines, settings) as h:
            killed = await ask(h, "Count from one to one hundred, in words.")
            assert killed.status == "failed"
            (error,) = h.of(m.SessionError)
            assert error.code == "response_failed" and "LLM endpoint failed" in error.message
            down = await ask(h, "Are you there?")  # nobody listens on the port: failed at once
            assert down.status == "failed" and "LLM endpoint" in (down.reason or "")
            llama.start()  # back, on the same port
            back = await ask(h, "Say hello.")
            assert back.status in ("completed", "incomplete") and back.item is not None
            assert back.item.text
            assert h.session.closed_reason is None
    finally:
        await remote.aclose()


# ---------------------------------------------------------------- the apology on a phone call

APOLOGY = "Sorry, say that again."


async def test_a_reply_that_fails_unheard_is_followed_by_the_apology_once() -> None:
    engines = engines_with()
    async with Harness(engines, SessionSettings(turn_detection=None, apology=APOLOGY)) as h:
        h.session.add_item(Item("item_1", "user", text="boom"))
        h.session.create_response()
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.02))
        failed, apology = h.of(m.ReplyDone)
        assert failed.status == "failed" and not failed.output_started
        assert apology.status == "completed" and apology.item is not None
        assert apology.item.text == APOLOGY and apology.output_started
        assert [e.info.scripted for e in h.of(m.ReplyStarted)] == [False, True]
        assert [(i.role, i.text) for i in h.session.conversation.items] == [
            ("user", "boom"),
            ("assistant", APOLOGY),
        ]
        h.session.settings.apology = "boom, I failed too"  # an apology that fails is not retried
        h.session.add_item(Item("item_2", "user", text="boom again"))
        h.session.create_response()
        await h.feed(silence(1.0))
        assert [d.status for d in h.of(m.ReplyDone)[2:]] == ["failed", "failed"]
        assert len(h.of(m.ReplyStarted)) == 4


async def test_a_caller_who_could_not_be_transcribed_hears_the_apology() -> None:
    asr = PoisonedAsr()
    async with Harness(engines_with(asr), SessionSettings(apology=APOLOGY)) as h:
        asr.poisoned.add(h.session.id)
        await h.feed(tone(0.6))
        await h.feed_until(silence(0.02), m.ReplyDone)
        assert [e.code for e in h.of(m.TranscriptionFailed)] == ["asr_failed"]
        (started,) = h.of(m.ReplyStarted)
        assert started.info.scripted
        (done,) = h.of(m.ReplyDone)
        assert done.status == "completed" and done.item is not None and done.item.text == APOLOGY
        asr.poisoned.clear()  # the caller says it again, and is answered
        await h.feed(silence(1.0))
        await h.feed(tone(0.6))
        while len(h.of(m.ReplyDone)) < 2:
            await h.feed(silence(0.02))
        assert h.of(m.ReplyDone)[1].item.text == "You said hello there."  # type: ignore[union-attr]


class FailsMidReply:
    """Says a sentence, then fails a second later (on the harness's virtual clock)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions
    ) -> AsyncIterator[LlmEvent]:
        yield "The weather is fine today. "
        await self.clock.sleep_until(self.clock.now() + 1.0)
        raise EngineError("the model crashed", engine="llm")


async def test_no_apology_after_a_reply_was_heard_or_without_the_setting() -> None:
    engines = engines_with()
    async with Harness(engines, SessionSettings(turn_detection=None, apology=APOLOGY)) as h:
        engines.llm = FailsMidReply(h.clock)
        h.session.add_item(Item("item_1", "user", text="weather?"))
        h.session.create_response()
        await h.feed(silence(2.0))
        (done,) = h.of(m.ReplyDone)
        assert done.status == "failed" and done.output_started  # its first clause was heard
    async with Harness(engines_with(), SessionSettings(turn_detection=None)) as h:
        h.session.add_item(Item("item_1", "user", text="boom"))
        h.session.create_response()
        await h.feed(silence(1.0))
        assert [d.status for d in h.of(m.ReplyDone)] == ["failed"]


async def test_a_twilio_caller_hears_the_apology_when_the_reply_fails() -> None:
    from transports import g711

    async with light_server(engines_with(PoisonedAsr("boom"))) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/twilio/media-stream"
        async with websockets.connect(url) as ws:
            sid = "MZ" + "0" * 32
            start = {"accountSid": "AC1", "callSid": "CA1", "streamSid": sid, "tracks": ["inbound"],
                     "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}  # fmt: skip
            await ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
            await ws.send(json.dumps({"event": "start", "streamSid": sid, "start": start}))
            speech = np.concatenate([tone(0.6, 8000), silence(1.5, 8000)])
            for n, at in enumerate(range(0, len(speech), 160)):
                payload = base64.b64encode(g711.ulaw_encode(speech[at : at + 160])).decode()
                media = {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n)}
                message = {
                    "event": "media",
                    "streamSid": sid,
                    "media": {**media, "payload": payload},
                }
                await ws.send(json.dumps(message))
            heard = 0
            async with asyncio.timeout(LIMIT_S):
                while True:
                    message = json.loads(await ws.recv())
                    if message["event"] == "media":
                        heard += len(base64.b64decode(message["media"]["payload"]))
                    elif message["event"] == "mark" and not message["mark"]["name"].startswith("~"):
                        break  # the end of a reply that was heard
            (session_id,) = server.sessions
        record = await asyncio.wait_for(server.wait_ended(session_id), LIMIT_S)
    said = [(i["role"], i["text"]) for i in record["items"]]  # type: ignore[union-attr]
    assert said == [("user", "boom"), ("assistant", server.config.twilio.apology)]
    assert heard >= 8 * MS_PER_WORD * len(server.config.twilio.apology.split())  # μ-law, 8 kHz
