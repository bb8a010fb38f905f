"""Operations: Prometheus metrics, liveness and readiness, JSON logs, and the drain on SIGTERM.

All but the last test use fake engines (no models); the last starts a real ``voice serve``."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from pipeline import messages as m
from pipeline.errors import ConfigError
from pipeline.session import Session
from voice import logs
from voice.drain import SHUTTING_DOWN, ShutdownSignals, drain
from voice.metrics import ServerMetrics
from voice.server import VoiceServer, freeze_start_up_objects

from .conftest import test_config as base_config
from .fakes import fake_engines

ROOT = Path(__file__).resolve().parent.parent
TEXT_ONLY = {"type": "response.create", "response": {"output_modalities": ["text"]}}


@pytest.fixture
async def light_server() -> AsyncIterator[VoiceServer]:
    config = base_config()
    config.server.max_sessions = 2
    server = VoiceServer(config, fake_engines([], ["Hello there.", "Again."]))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


def url(server: VoiceServer, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}{path}"


async def until(ws: websockets.ClientConnection, kind: str) -> dict[str, Any]:
    """The next server event of type ``kind`` (others skipped)."""
    async with asyncio.timeout(10):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return dict(event)


async def samples(server: VoiceServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``, parsed: (sample name, sorted labels) → value."""
    async with aiohttp.ClientSession() as http, http.get(url(server, "/metrics")) as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def ready(server: VoiceServer) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url(server, "/readyz")) as r:
        return r.status, await r.json()


# Metrics


async def test_metrics_after_a_text_response(light_server: VoiceServer) -> None:
    async with websockets.connect(url(light_server, "/v1/realtime", "ws")) as ws:
        await until(ws, "session.created")
        (session_id,) = light_server.sessions
        during = await samples(light_server)
        assert during[("voice_sessions_active", (("transport", "websocket"),))] == 1
        await ws.send(json.dumps(TEXT_ONLY))
        done = await until(ws, "response.done")
        assert done["response"]["status"] == "completed"
    await asyncio.wait_for(light_server.wait_ended(session_id), 10)

    after = await samples(light_server)
    assert after[("voice_responses_total", (("status", "completed"),))] == 1
    assert after[("voice_responses_total", (("status", "cancelled"),))] == 0
    assert after[("voice_sessions_total", (("transport", "websocket"),))] == 1
    assert after[("voice_sessions_active", (("transport", "websocket"),))] == 0
    assert after[("voice_sessions_active", (("transport", "twilio"),))] == 0
    stage = ("stage", "llm_first_token")
    assert after[("voice_turn_stage_seconds_count", (stage,))] == 1
    assert after[("voice_turn_stage_seconds_count", (("stage", "asr_done"),))] == 0
    assert after[("voice_turn_voice_to_voice_seconds_count", ())] == 0  # not a spoken turn
    assert after[("voice_barge_ins_total", ())] == 0
    assert after[("voice_session_events_pending", ())] == 0
    assert after[("voice_webrtc_calls", (("state", "connecting"),))] == 0
    assert ("voice_asr_jobs_waiting", ()) not in after  # the fake ASR keeps no queue


def test_metrics_from_session_events() -> None:
    metrics = ServerMetrics()
    session = Session(fake_engines([], []), session_id="sess_x", observers=[metrics.observe])
    metrics.opened(session.id, "twilio")
    metrics.watch({session.id: session}, lambda: (1, 2), asr_waiting=lambda: 3)
    metrics.models({"asr": 1.5}, {"asr": 0.25})
    heard = m.ReplyDone("resp_1", None, "cancelled", "turn_detected", output_started=True)
    unheard = m.ReplyDone("resp_2", None, "cancelled", "turn_detected", output_started=False)
    spoken = {"speech_end": 0.0, "turn_end": 500.0, "first_audio_sent": 900.0, "overhead": 12.0}
    for event in (
        heard,
        unheard,
        m.SessionError("boom", code="response_failed"),
        m.TranscriptionFailed("item_1", "no"),
        m.TurnMetrics("resp_1", None, spoken),
    ):
        metrics.observe(session, event)
    text = metrics.render().decode()
    assert "voice_barge_ins_total 1.0" in text
    assert 'voice_responses_total{status="cancelled"} 2.0' in text
    assert 'voice_errors_total{code="response_failed"} 1.0' in text
    assert 'voice_errors_total{code="asr_failed"} 1.0' in text
    assert 'voice_turn_stage_seconds_bucket{le="0.5",stage="turn_end"} 1.0' in text
    assert 'voice_turn_voice_to_voice_seconds_bucket{le="0.75"} 0.0' in text
    assert 'voice_turn_voice_to_voice_seconds_bucket{le="1.0"} 1.0' in text
    assert 'voice_model_load_seconds{engine="asr"} 1.5' in text
    assert 'voice_model_warm_up_seconds{engine="asr"} 0.25' in text
    assert "voice_asr_jobs_waiting 3.0" in text
    assert 'voice_webrtc_calls{state="connected"} 2.0' in text
    assert 'voice_sessions_active{transport="twilio"} 1.0' in text
    session.close("done")  # through the session's own emit: the observer sees SessionClosed
    assert 'voice_sessions_active{transport="twilio"} 0.0' in metrics.render().decode()


def test_a_failing_observer_does_not_stop_the_session(caplog: pytest.LogCaptureFixture) -> None:
    def broken(session: Session, event: m.SessionEvent) -> None:
        raise RuntimeError("observer bug")

    seen: list[m.SessionEvent] = []
    session = Session(
        fake_engines([], []), observers=[broken, lambda s, e: seen.append(e)], session_id="s"
    )
    session.close("bye")
    assert [type(e) for e in seen] == [m.SessionClosed]
    assert "observer" in caplog.text
    assert session._events.get_nowait() == m.SessionClosed("bye")


# Health and readiness


async def test_readyz_at_capacity_and_while_draining(light_server: VoiceServer) -> None:
    assert await ready(light_server) == (
        200,
        {"status": "ready", "failed": {}, "sessions": 0, "max_sessions": 2},
    )
    async with (
        websockets.connect(url(light_server, "/v1/realtime", "ws")) as a,
        websockets.connect(url(light_server, "/v1/realtime", "ws")) as b,
    ):
        for ws in (a, b):
            await until(ws, "session.created")
        status, body = await ready(light_server)
        assert status == 503 and set(body["failed"]) == {"capacity"}
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url(light_server, "/v1/realtime", "ws")):
                pass
        assert refused.value.response.status_code == 503
        ids = list(light_server.sessions)
    for session_id in ids:
        await asyncio.wait_for(light_server.wait_ended(session_id), 10)
    assert (await ready(light_server))[0] == 200
    light_server.draining = True
    status, body = await ready(light_server)
    assert status == 503 and body["failed"] == {"draining": "server is draining"}
    async with aiohttp.ClientSession() as http, http.get(url(light_server, "/healthz")) as r:
        assert r.status == 200  # alive all the same
    refusals = await samples(light_server)
    assert refusals[("voice_sessions_refused_total", (("reason", "capacity"),))] == 1


# Drain


async def test_a_drain_lets_the_active_session_finish(light_server: VoiceServer) -> None:
    async with websockets.connect(url(light_server, "/v1/realtime", "ws")) as ws:
        await until(ws, "session.created")
        (session_id,) = light_server.sessions
        draining = asyncio.create_task(drain(light_server, timeout_s=30, close_timeout_s=5))
        await asyncio.sleep(0)  # the drain has started: new sessions are refused
        assert light_server.draining
        async with aiohttp.ClientSession() as http:
            async with http.get(url(light_server, "/v1/realtime")) as r:
                assert r.status == 503 and await r.text() == "server is draining"
            async with http.get(url(light_server, "/readyz")) as r:
                assert r.status == 503
        await ws.send(json.dumps(TEXT_ONLY))  # the active session goes on working
        assert (await until(ws, "response.done"))["response"]["status"] == "completed"
        assert not draining.done()
    assert await asyncio.wait_for(draining, 10) == 0  # it ended by itself: none closed
    record = light_server.ended[session_id]
    assert record["closed_reason"] == "client disconnected"
    counts = await samples(light_server)
    assert counts[("voice_sessions_refused_total", (("reason", "draining"),))] == 1


async def test_the_drain_deadline_closes_sessions_with_a_reason(light_server: VoiceServer) -> None:
    async with websockets.connect(url(light_server, "/v1/realtime", "ws")) as ws:
        await until(ws, "session.created")
        (session_id,) = light_server.sessions
        await ws.send(json.dumps(TEXT_ONLY))
        await until(ws, "response.done")
        closed = await asyncio.wait_for(drain(light_server, timeout_s=0.05, close_timeout_s=5), 10)
        assert closed == 1
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1000 and ws.close_reason == SHUTTING_DOWN
    record = light_server.ended[session_id]
    assert record["closed_reason"] == SHUTTING_DOWN
    assert [item["role"] for item in record["items"]] == ["assistant"]  # the transcript is kept


async def test_a_second_signal_closes_the_sessions_at_once(light_server: VoiceServer) -> None:
    signals = ShutdownSignals()
    signals.received(signal.SIGTERM)
    assert signals.drain.is_set() and not signals.hurry.is_set()
    async with websockets.connect(url(light_server, "/v1/realtime", "ws")) as ws:
        await until(ws, "session.created")
        draining = asyncio.create_task(
            drain(light_server, timeout_s=300, close_timeout_s=5, hurry=signals.hurry)
        )
        signals.received(signal.SIGINT)
        assert signals.hurry.is_set()
        assert await asyncio.wait_for(draining, 10) == 1  # long before its deadline
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_reason == SHUTTING_DOWN


# Logs


def test_json_logs_carry_the_session_id() -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(logs.SessionFilter())
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("voice.test_operations")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logging.LoggerAdapter(logger, {"session": "sess_42"}).warning("hello %s", "there")
        logger.warning("no session here")
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, second, third = (json.loads(line) for line in lines)
    assert first["session"] == "sess_42" and first["message"] == "hello there"
    assert first["level"] == "WARNING" and first["logger"] == "voice.test_operations"
    assert "session" not in second
    assert "ValueError: bad" in third["exception"]
    with pytest.raises(ConfigError, match="log_format"):
        logs.formatter("xml")


def test_start_up_objects_are_frozen_and_start_up_garbage_is_collected_first() -> None:
    """What start-up left unreachable is freed, not frozen for ever; what lives on is out of
    the collector's scans; what the sessions make later is collected as usual."""

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    alive = Cycle()
    dead = weakref.ref(Cycle())  # a cycle nothing refers to: only a collection frees it
    assert dead() is not None
    try:
        frozen = freeze_start_up_objects()
        assert dead() is None
        assert frozen == gc.get_freeze_count() > 0
        assert not any(obj is alive for obj in gc.get_objects())  # (frozen: not scanned)
        later = weakref.ref(Cycle())
        gc.collect()
        assert later() is None
    finally:
        gc.unfreeze()


# The real command


@pytest.mark.models
async def test_sigterm_drains_a_real_server(tmp_path: Path) -> None:
    """``voice serve`` with the real models: SIGTERM while a session is active → new
    connections get 503, the session is closed at the deadline with the reason, exit 0."""
    stderr = (tmp_path / "server.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voice",
        "serve",
        "--port",
        "0",
        "--set",
        "server.log_format=json",
        "--set",
        "server.drain_timeout_s=1.5",
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(120):
            line = (await proc.stdout.readline()).decode()
            while not line.startswith("READY"):
                assert line, f"the server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
                line = (await proc.stdout.readline()).decode()
        base = line.split()[1].rstrip("/")
        async with websockets.connect(base.replace("http", "ws") + "/v1/realtime") as ws:
            await until(ws, "session.created")
            proc.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as http:
                async with asyncio.timeout(10):
                    while True:  # the signal is handled: /readyz turns 503
                        async with http.get(f"{base}/readyz") as r:
                            if r.status == 503:
                                assert (await r.json())["failed"]["draining"]
                                break
                        await asyncio.sleep(0.05)
                async with http.get(f"{base}/v1/realtime") as r:
                    assert r.status == 503 and await r.text() == "server is draining"
            await asyncio.wait_for(ws.wait_closed(), 15)
            assert ws.close_reason == SHUTTING_DOWN
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr.close()
    records = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    messages = [r["message"] for r in records]
    assert any(msg.startswith("SIGTERM: draining") for msg in messages), messages
    frozen = [msg for msg in messages if msg.startswith("garbage collector:")]
    assert len(frozen) == 1 and int(frozen[0].split()[2]) > 10_000, frozen  # (gc_freeze default)
    assert any("closing 1 sessions still active" in msg for msg in messages), messages
    closing = [r for r in records if "session closing: server shutting down" in r["message"]]
    assert len(closing) == 1 and closing[0]["session"].startswith("sess"), closing
