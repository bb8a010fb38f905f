"""The server facing broken or hostile clients (fake engines, real sockets on loopback): the
reasons it gives and what it logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from pipeline.engines import Engines
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines
from .test_hostile_client import _BrokenVad


async def _serve(engines: Engines, heartbeat_s: float = 30.0) -> VoiceServer:
    config = base_config()
    config.server.heartbeat_s = heartbeat_s
    server = VoiceServer(config, engines)
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def light_server() -> AsyncIterator[VoiceServer]:
    server = await _serve(fake_engines(["hi"], ["Hello."]), heartbeat_s=0.4)
    yield server
    await server.stop()


async def test_a_client_that_does_not_answer_pings_is_dropped_with_that_reason(
    light_server: VoiceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    url = f"ws://127.0.0.1:{light_server.port}/v1/realtime"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, autoping=False) as ws:
        created = json.loads((await ws.receive()).data)
        session_id = created["session"].get("id") or next(iter(light_server.sessions))
        async with asyncio.timeout(30):  # pings arrive (and go unanswered) until the server leaves
            while (await ws.receive()).type not in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ):
                pass
        async with asyncio.timeout(30):
            record = await light_server.wait_ended(session_id)
    assert "did not answer a ping" in str(record["closed_reason"])
    assert any("did not answer a ping" in r.getMessage() for r in caplog.records)


async def test_a_malformed_http_request_is_one_info_line_not_an_error(
    light_server: VoiceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection("127.0.0.1", light_server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(30):
        status = await reader.readline()
        await reader.read()  # the server closes the connection after its 400
    writer.close()
    assert status.split()[1] == b"400", status
    server_records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert server_records, "aiohttp logged nothing: the test did not reach the parser"
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in server_records)
    (line,) = [r.getMessage() for r in server_records if "malformed HTTP" in r.getMessage()]
    assert "Invalid header token" in line and "\n" not in line


async def test_a_session_that_fails_closes_its_socket_with_1011_and_the_reason() -> None:
    engines = fake_engines(["hi"], ["Hello."])
    engines.vad = _BrokenVad()
    server = await _serve(engines)
    try:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive()  # session.created
            audio = "AAAA" * 4000  # 12,000 bytes of silence at 24 kHz: enough VAD windows
            await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            async with asyncio.timeout(30):
                error = json.loads((await ws.receive()).data)
                closing = await ws.receive()
        assert error["type"] == "error" and error["error"]["code"] == "internal_error"
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1011
        assert "internal error" in (closing.extra or "")
    finally:
        await server.stop()
