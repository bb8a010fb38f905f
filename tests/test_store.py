"""Session records: what a session's events become in the store, against SQLite and a real
PostgreSQL; a full queue and a failing disk never hold up a session; a server killed mid-call
keeps every completed turn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import threading
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from pipeline import messages as m
from pipeline.context import Item
from pipeline.engines import StreamEnd
from pipeline.session import SessionSettings
from voice.store import Kind, Record, SessionRecorder, SessionStore, UnknownCursor
from voice.store.audio import AudioFiles
from voice.store.postgres import PostgresBackend
from voice.store.records import SessionRow, assemble
from voice.store.sql import SqlBackend
from voice.store.sqlite import SqliteBackend

from . import pg
from .fakes import ScriptedLlm, call, fake_engines, silence, tone
from .harness import Harness

LONG_REPLY = " ".join(f"word{i}" for i in range(20)) + "."
MANUAL = SessionSettings(turn_detection=None, output_rate=24_000)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    if pg.binaries() is None:
        pytest.fail("PostgreSQL is required (make system-deps installs it)")
    with pg.cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlBackend]:
    if request.param == "sqlite":
        yield SqliteBackend(tmp_path / "sessions.db")
        return
    url = request.getfixturevalue("pg_url")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:  # each test on empty tables
        conn.execute("DROP TABLE IF EXISTS records, sessions")
    yield PostgresBackend(url)


@pytest.fixture
async def store(backend: SqlBackend) -> AsyncIterator[SessionStore]:
    store = SessionStore(backend, max_queued=1000)
    store.start()
    yield store
    await asyncio.to_thread(store.close)


async def stored(store: SessionStore, session_id: str) -> dict[str, Any]:
    assert await asyncio.to_thread(store.flush)
    record = await asyncio.to_thread(store.get_session, session_id)
    assert record is not None
    return record


def user(text: str, item_id: str) -> Item:
    return Item(item_id, "user", text=text)


async def reply(h: Harness) -> m.ReplyDone:
    before = len(h.of(m.ReplyDone))
    h.session.create_response()
    while len(h.of(m.ReplyDone)) == before:
        await h.feed(silence(0.02))
    return h.of(m.ReplyDone)[-1]


async def test_a_conversation_is_stored_in_order_as_heard(store: SessionStore) -> None:
    engines = fake_engines(["x"], ["Hello there.", LONG_REPLY])
    async with Harness(engines, MANUAL) as h:
        SessionRecorder(store, h.session, "websocket", clock=h.clock.now)
        h.session.add_item(user("hi", "item_u1"))
        first = await reply(h)
        h.session.add_item(user("tell me a story", "item_u2"))
        h.session.create_response()
        await h.feed_until(silence(0.02), m.ReplyAudio)
        await h.feed(silence(1.0))
        h.session.cancel_response()
        await h.feed(silence(0.02))
        second = h.of(m.ReplyDone)[-1]
        h.session.truncate_item(second.item.id, 0, 400)  # the caller heard two words
        h.session.delete_item("item_u1")
        await h.feed(silence(0.02))
    record = await stored(store, h.session.id)
    assert record["transport"] == "websocket"
    items = [(i["role"], i["text"], i["status"]) for i in record["items"]]
    assert items == [
        ("assistant", "Hello there.", "completed"),
        ("user", "tell me a story", "completed"),
        ("assistant", "word0 word1", "incomplete"),
    ]
    assert record["items"][2]["audio_ms"] == 400
    assert [d["item_id"] for d in record["deleted"]] == ["item_u1"]
    assert [(t["item_id"], t["audio_end_ms"], t["text"]) for t in record["truncations"]] == [
        (second.item.id, 400, "word0 word1")
    ]
    responses = [(r["response_id"], r["status"]) for r in record["responses"]]
    assert responses == [(first.response_id, "completed"), (second.response_id, "cancelled")]
    assert record["responses"][1]["reason"] == "client_cancelled"
    assert [x["response_id"] for x in record["metrics"]] == [first.response_id, second.response_id]
    assert "first_audio_sent" in record["metrics"][0]["metrics_ms"]
    assert record["close_reason"] == "test over"
    assert record["missing_records"] == 0


async def test_tool_calls_and_their_outputs_are_kept(store: SessionStore) -> None:
    llm = ScriptedLlm([[*call("get_weather", '{"city": "Paris"}'), StreamEnd("tool_calls", 9, 5)], "Sunny."])  # fmt: skip
    engines = fake_engines(["x"], ["y"])
    engines.llm = llm
    async with Harness(engines, MANUAL) as h:
        SessionRecorder(store, h.session, "twilio", clock=h.clock.now)
        h.session.add_item(user("weather in Paris?", "item_u1"))
        done = await reply(h)
        output = Item("item_out", "tool", type="function_call_output", call_id="call_1", text='{"sky": "clear"}')  # fmt: skip
        h.session.add_item(output)
        await reply(h)
        record = await stored(store, h.session.id)
    assert [c.name for c in done.calls] == ["get_weather"]
    assert record["tool_calls"] == [
        {
            "item_id": done.calls[0].id,
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "status": "completed",
            "output": '{"sky": "clear"}',
        }
    ]
    types = [i["type"] for i in record["items"]]
    assert types == ["message", "function_call", "function_call_output", "message"]
    assert record["items"][-1]["text"] == "Sunny."
    assert record["responses"][0]["usage"] == {"input": 9, "output": 5}


async def test_errors_are_kept(store: SessionStore) -> None:
    engines = fake_engines(["x"], ["y"])

    async def broken(audio: object, *, owner: str = "") -> str:
        raise TimeoutError

    engines.asr.transcribe = broken  # type: ignore[method-assign]
    async with Harness(engines) as h:
        SessionRecorder(store, h.session, "websocket", clock=h.clock.now)
        await h.feed(tone(1.0))
        await h.feed_until(silence(0.02), m.TranscriptionFailed)
        record = await stored(store, h.session.id)
    assert [e["code"] for e in record["errors"]] == ["asr_failed"]
    assert record["errors"][0]["item_id"] == record["items"][0]["id"]
    assert (record["items"][0]["role"], record["items"][0]["text"]) == ("user", "")


async def test_sessions_are_listed_newest_first_a_page_at_a_time(store: SessionStore) -> None:
    for n in range(5):
        store.open_session(f"sess_{n}", "websocket", 1000.0 + n)
    store.open_session("sess_3b", "twilio", 1003.0)  # the same start as sess_3
    assert await asyncio.to_thread(store.flush)
    pages, before = [], None
    while True:
        page = await asyncio.to_thread(store.list_sessions, 2, before)
        if not page:
            break
        pages.append([s["id"] for s in page])
        before = page[-1]["id"]
    assert pages == [["sess_4", "sess_3b"], ["sess_3", "sess_2"], ["sess_1", "sess_0"]]
    with pytest.raises(UnknownCursor):
        await asyncio.to_thread(store.list_sessions, 2, "sess_nope")
    assert await asyncio.to_thread(store.get_session, "sess_nope") is None


class Stuck(SqliteBackend):
    """A disk that does not answer until ``release`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()

    def open_session(self, row: SessionRow) -> None:
        self.release.wait(30)
        super().open_session(row)


async def test_a_full_queue_drops_records_counts_them_and_the_session_goes_on(
    tmp_path: Path,
) -> None:
    backend = Stuck(tmp_path / "sessions.db")
    store = SessionStore(backend, max_queued=4)
    store.start()
    try:
        async with Harness(fake_engines(["x"], ["One two.", "Three four."]), MANUAL) as h:
            recorder = SessionRecorder(store, h.session, "websocket", clock=h.clock.now)
            for n in range(2):
                h.session.add_item(user(f"question {n}", f"item_u{n}"))
                assert (await reply(h)).status == "completed"  # never held up
        assert store.stats.dropped > 0
        backend.release.set()
        assert await asyncio.to_thread(store.flush)
        loaded = await asyncio.to_thread(backend.load, h.session.id)
        assert loaded is not None  # what was queued was written, the rest counted
        assert len(loaded[1]) + store.stats.dropped == recorder.count
    finally:
        backend.release.set()
        await asyncio.to_thread(store.close)


class FillsUp(SqliteBackend):
    """SQLite with room for a few more pages only: the next write fails with SQLITE_FULL,
    as on a full disk."""

    def _connect(self, *, readonly: bool) -> Any:
        conn = super()._connect(readonly=readonly)
        if not readonly:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(pages, 4) + 3}")
        return conn


async def test_a_full_disk_is_logged_the_session_goes_on_and_what_was_stored_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SessionStore(FillsUp(tmp_path / "sessions.db"), max_queued=1000)
    store.start()
    try:
        async with Harness(fake_engines(["x"], ["Fine."]), MANUAL) as h:
            SessionRecorder(store, h.session, "websocket", clock=h.clock.now)
            h.session.add_item(user("first", "item_first"))
            assert await asyncio.to_thread(store.flush)
            for n in range(40):  # 40 x 2 KB: more than three pages
                h.session.add_item(user(f"{n} " + "x" * 2000, f"item_{n}"))
            assert (await reply(h)).status == "completed"
        record = await stored(store, h.session.id)
    finally:
        await asyncio.to_thread(store.close)
    assert store.stats.failed > 0
    assert "database or disk is full" in caplog.text
    assert record["items"][0]["text"] == "first"


async def test_a_store_that_cannot_open_its_file_is_logged_and_the_session_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = SessionStore(SqliteBackend(tmp_path / "file" / "sessions.db"), max_queued=100)
    store.start()
    try:
        async with Harness(fake_engines(["x"], ["Fine."]), MANUAL) as h:
            SessionRecorder(store, h.session, "websocket", clock=h.clock.now)
            h.session.add_item(user("hello", "item_1"))
            assert (await reply(h)).status == "completed"
        assert await asyncio.to_thread(store.flush)
    finally:
        await asyncio.to_thread(store.close)
    assert store.stats.failed > 0 and store.stats.written == 0
    assert "cannot open SQLite" in caplog.text


async def test_both_sides_are_recorded_as_wav(tmp_path: Path) -> None:
    store = SessionStore(SqliteBackend(tmp_path / "s.db"), audio=AudioFiles(tmp_path / "audio"))
    store.start()
    try:
        async with Harness(fake_engines(["hi"], ["One two."])) as h:
            SessionRecorder(store, h.session, "websocket", record_audio=True, clock=h.clock.now)
            fed: list[int] = []
            h.session.input_taps.append(
                lambda samples, rate: fed.append(len(samples) * 16_000 // rate)
            )
            await h.feed(tone(1.0, rate=8000), rate=8000)
            await h.feed_until(silence(0.02, rate=8000), m.ReplyDone)
        assert await asyncio.to_thread(store.flush)
    finally:
        await asyncio.to_thread(store.close)
    folder = tmp_path / "audio" / h.session.id
    with wave.open(str(folder / "caller.wav")) as w:
        assert w.getframerate() == 16_000
        assert abs(w.getnframes() - sum(fed)) < 100, store.stats  # all the caller sent, at 16 kHz
    with wave.open(str(folder / "agent.wav")) as w:
        assert w.getframerate() == 24_000
        assert w.getnframes() == 2 * 200 * 24  # two words of 200 ms, as sent


async def test_records_kinds_round_trip(store: SessionStore) -> None:
    store.open_session("sess_k", "webrtc", 1.0)
    for seq, kind in enumerate(Kind):
        payload = {
            "id": "item_1",
            "type": "message",
            "role": "user",
            "status": "completed",
            "text": "é",
        }
        if kind is not Kind.ITEM:
            payload = {"item_id": "item_9", "reason": "bye", "audio_end_ms": 0, "code": "c"}
        store.record("sess_k", Record(seq, 2.0 + seq, kind, payload))
    record = await stored(store, "sess_k")
    assert record["items"][0]["text"] == "é"
    assert (record["ended_at"], record["close_reason"]) == (
        2.0 + list(Kind).index(Kind.CLOSED),
        "bye",
    )
    json.dumps(record)


# ---------------------------------------------------------------- the server killed mid-call


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), 120))
        if event["type"] == kind:
            return event


def _replies(db: Path) -> list[str]:
    """The ids of the agent's items committed so far in the store's one session."""
    backend = SqliteBackend(db)
    try:
        sessions = backend.list_sessions(10)
        record = backend.load(sessions[0].id) if sessions else None
    finally:
        backend.close()
    if record is None:
        return []
    return [i["id"] for i in assemble(*record)["items"] if i["role"] == "assistant"]


async def _committed(db: Path, ids: list[str]) -> None:
    """Until the server (another process) has committed the replies ``ids``, for at most 60 s:
    its database is all there is to watch, so it is read again every 50 ms."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while (found := await asyncio.to_thread(_replies, db)) != ids:
        assert loop.time() < deadline, f"committed replies {found}, expected {ids}"
        await asyncio.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.models
async def test_a_server_killed_mid_call_keeps_every_completed_turn(tmp_path: Path) -> None:
    db, port = tmp_path / "sessions.db", _free_port()
    voice = Path(sys.executable).parent / "voice"
    args = [str(voice), "serve", "--port", str(port), "--set", f"store.url=sqlite:///{db}",
            "--set", "server.warm_up=false", "--set", "llm.max_tokens=32"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        line = b""
        while not line.startswith(b"READY"):
            line = await asyncio.wait_for(proc.stdout.readline(), 120)
            assert line, "the server did not start"
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime") as ws:
            await _until(ws, "session.created")
            answered: list[str] = []
            texts = ["Say hello.", "Name a color.", "Count to twenty slowly."]
            for n, text in enumerate(texts):
                if n == 2:
                    # the writer thread commits each record as it comes (README, "What a crash
                    # loses": what is still queued, normally nothing, is lost); the kill comes
                    # once it has, so what is checked is that a commit survives it
                    await _committed(db, answered)
                content = [{"type": "input_text", "text": text}]
                item = {"type": "message", "role": "user", "content": content}
                await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
                create = {"type": "response.create", "response": {"output_modalities": ["text"]}}
                await ws.send(json.dumps(create))
                if n < 2:
                    done = (await _until(ws, "response.done"))["response"]
                    assert done["status"] in ("completed", "incomplete")  # (at max_tokens)
                    answered += [o["id"] for o in done["output"]]
                else:
                    await _until(ws, "response.created")
                    proc.send_signal(signal.SIGKILL)  # mid-third-response
                    assert await asyncio.wait_for(proc.wait(), 30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), 30)
    backend = SqliteBackend(db)
    (only,) = backend.list_sessions(10)  # the one call
    record = backend.load(only.id)
    assert record is not None
    items = assemble(*record)["items"]
    assert [i["text"] for i in items if i["role"] == "user"][:2] == texts[:2]
    replies = [i for i in items if i["role"] == "assistant"]
    assert [i["id"] for i in replies] == answered  # the reply being written is not there
    assert all(i["text"] and i["status"] != "in_progress" for i in replies)
    assert [i["role"] for i in items[:4]] == ["user", "assistant", "user", "assistant"]
    with contextlib.closing(sqlite3.connect(db)) as conn:  # the file is whole
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_the_endpoints_list_and_fetch_sessions(tmp_path: Path) -> None:
    from aiohttp import ClientSession, web

    from voice.store.api import add_routes

    store = SessionStore(SqliteBackend(tmp_path / "s.db"))
    store.start()
    for n in range(3):
        store.open_session(f"sess_{n}", "websocket", 10.0 + n)
    store.record("sess_1", Record(0, 11.5, Kind.CLOSED, {"reason": "bye"}))
    assert await asyncio.to_thread(store.flush)
    app = web.Application()
    add_routes(app, store)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}/v1/sessions"
    try:
        async with ClientSession() as http:
            async with http.get(f"{base}?limit=2") as r:
                page = await r.json()
            assert [s["id"] for s in page["data"]] == ["sess_2", "sess_1"]
            assert (page["has_more"], page["last_id"]) == (True, "sess_1")
            async with http.get(f"{base}?limit=2&before=sess_1") as r:
                page = await r.json()
            assert [s["id"] for s in page["data"]] == ["sess_0"] and not page["has_more"]
            async with http.get(f"{base}/sess_1") as r:
                one = await r.json()
            assert (one["close_reason"], one["ended_at"]) == ("bye", 11.5)
            for url, status in [(f"{base}/sess_x", 404), (f"{base}?limit=0", 400), (f"{base}?before=sess_x", 400)]:  # fmt: skip
                async with http.get(url) as r:
                    assert r.status == status, url
    finally:
        await runner.cleanup()
        await asyncio.to_thread(store.close)
