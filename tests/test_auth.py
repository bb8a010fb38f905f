"""Who may connect (``voice/auth.py``): API keys, client secrets, origins, Twilio's signature, the
bind refusal, and the limits a key or a session runs into. Fake engines, no models."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import websockets

from pipeline.clock import VirtualClock
from pipeline.deadlines import due, enforce, idle_reason, length_reason
from pipeline.session import Session, SessionLimits
from transports import twilio_signature
from voice.auth import exposure_refusal, origin_allowed
from voice.client_secrets import SecretStore
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines

KEY = "sk-test-the-right-key-0123456789"
OTHER = "sk-test-another-key-9876543210"
SDP = {"Content-Type": "application/sdp"}


async def running(**settings: str) -> VoiceServer:
    overrides = {"server.api_keys": f"{KEY},{OTHER}", **settings}
    config = base_config()
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        setattr(getattr(config, section), key, type(getattr(getattr(config, section), key))(value))
    server = VoiceServer(config, fake_engines(["hi"], ["Hello."]))
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def keyed() -> AsyncIterator[VoiceServer]:
    server = await running()
    yield server
    await server.stop()


def ws_url(server: VoiceServer, path: str = "/v1/realtime") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def refused(url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, **kw):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def created(ws: websockets.ClientConnection) -> dict[str, Any]:
    event = json.loads(await ws.recv())
    assert event["type"] == "session.created"
    session: dict[str, Any] = event["session"]
    return session


async def close_reason(ws: websockets.ClientConnection) -> str:
    """Read until the server closes; its reason."""
    async with asyncio.timeout(10):
        async for _ in ws:
            pass
    assert ws.close_reason is not None
    return ws.close_reason


# ------------------------------------------------------------------ keys


async def test_no_key_or_a_wrong_key_is_401_before_anything(keyed: VoiceServer) -> None:
    status, body = await refused(ws_url(keyed))
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert (await refused(ws_url(keyed), additional_headers=bearer("sk-wrong")))[0] == 401
    twilio = await refused(ws_url(keyed, "/v1/twilio/media-stream"))
    assert twilio[0] == 401  # no twilio.auth_token: a key like anywhere else
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{keyed.port}"
        async with http.post(f"{base}/v1/realtime/calls", data="v=0\r\n", headers=SDP) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/") as r:
            assert r.status == 200
    assert not keyed.sessions and not keyed.calls


async def test_a_key_opens_a_session_as_bearer_or_subprotocol(keyed: VoiceServer) -> None:
    async with websockets.connect(ws_url(keyed), additional_headers=bearer(KEY)) as ws:
        await created(ws)
    protocols: Any = ["realtime", f"openai-insecure-api-key.{OTHER}"]
    async with websockets.connect(ws_url(keyed), subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        await created(ws)


async def test_the_openai_sdk_connects_with_its_key(keyed: VoiceServer) -> None:
    base = f"http://127.0.0.1:{keyed.port}/v1"
    async with (
        openai.AsyncOpenAI(base_url=base, api_key=KEY) as client,
        client.realtime.connect(model="voice-local") as conn,
    ):
        event = await conn.recv()
        assert event.type == "session.created"
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-wrong") as client:
        with pytest.raises(websockets.InvalidStatus):
            async with client.realtime.connect(model="voice-local"):
                pass


async def test_keys_and_secrets_never_reach_the_log(
    keyed: VoiceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await refused(ws_url(keyed), additional_headers=bearer(KEY + "x"))
    async with websockets.connect(ws_url(keyed), additional_headers=bearer(KEY)) as ws:
        await created(ws)
    secret = await mint(keyed, KEY, {})
    async with websockets.connect(ws_url(keyed), additional_headers=bearer(secret)) as ws:
        await created(ws)
    client_side = ("websockets.", "aiohttp.client")  # the test's own clients log their headers
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(client_side))
    assert "refused GET /v1/realtime" in logged and "minted client secret" in logged
    for credential in (KEY, KEY + "x", secret, secret[3:]):
        assert credential not in logged


# ------------------------------------------------------------------ client secrets


async def mint(server: VoiceServer, credential: str, body: dict[str, Any]) -> str:
    url = f"http://127.0.0.1:{server.port}/v1/realtime/client_secrets"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers=bearer(credential)) as r,
    ):
        assert r.status == 200, await r.text()
        value: str = (await r.json())["value"]
    return value


async def test_a_client_secret_opens_a_session_with_its_configuration_until_it_expires(
    keyed: VoiceServer,
) -> None:
    now = [1_000_000.0]
    keyed.gate.secrets = SecretStore(16, now=lambda: now[0])
    base = f"http://127.0.0.1:{keyed.port}/v1"
    async with openai.AsyncOpenAI(base_url=base, api_key=KEY) as client:
        minted = await client.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Talk like a pirate."},
        )
    assert minted.value.startswith("ek_") and len(minted.value) >= 3 + 22  # ≥ 128 bits
    assert minted.expires_at == 1_000_060
    assert minted.session.type == "realtime"
    assert minted.session.instructions == "Talk like a pirate."

    protocols: Any = ["realtime", f"openai-insecure-api-key.{minted.value}"]
    async with websockets.connect(ws_url(keyed), subprotocols=protocols) as ws:
        assert (await created(ws))["instructions"] == "Talk like a pirate."
    async with websockets.connect(ws_url(keyed), additional_headers=bearer(minted.value)) as ws:
        assert (await created(ws))["instructions"] == "Talk like a pirate."

    now[0] += 60
    status, body = await refused(ws_url(keyed), additional_headers=bearer(minted.value))
    assert status == 401 and "expired" in body["error"]["message"]


async def test_a_secret_opens_sessions_only(keyed: VoiceServer) -> None:
    secret = await mint(keyed, KEY, {"session": {"instructions": "Be brief."}})
    url = f"http://127.0.0.1:{keyed.port}/v1/realtime/client_secrets"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={}, headers=bearer(secret)) as r:
            assert r.status == 401 and "only opens Realtime sessions" in await r.text()
        async with http.post(url, json={"expires_after": {"seconds": 5}}, headers=bearer(KEY)) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "expires_after.seconds"
        async with http.post(url, json={"session": {"voice": "nobody"}}, headers=bearer(KEY)) as r:
            assert r.status == 400  # refused now, not when a page connects with it
    twilio = ws_url(keyed, "/v1/twilio/media-stream")
    assert (await refused(twilio, additional_headers=bearer(secret)))[0] == 401


async def test_a_secret_works_for_webrtc_calls_and_their_hangup(keyed: VoiceServer) -> None:
    from .test_server_limits import unconnectable_offer

    secret = await mint(keyed, KEY, {"session": {"instructions": "Be brief."}})
    base = f"http://127.0.0.1:{keyed.port}"
    async with aiohttp.ClientSession() as http:
        offer = await unconnectable_offer()
        headers = {**SDP, **bearer(secret)}
        async with http.post(f"{base}/v1/realtime/calls", data=offer, headers=headers) as r:
            assert r.status == 201, await r.text()
            where = r.headers["Location"]
        (call,) = keyed.calls.values()
        assert call.conn.config.settings.instructions == "Be brief."
        async with http.post(f"{base}{where}/hangup", headers=bearer(OTHER)) as r:
            assert r.status == 404  # another key's call
        async with http.post(f"{base}{where}/hangup", headers=bearer(secret)) as r:
            assert r.status == 200
    assert not keyed.calls


# ------------------------------------------------------------------ origins, binding


def test_origins() -> None:
    host = "voice.example.com:8080"
    assert origin_allowed(None, host, ())  # not a browser
    assert origin_allowed("http://voice.example.com:8080", host, ())
    assert not origin_allowed("http://evil.example", host, ())
    assert not origin_allowed("null", host, ())
    assert origin_allowed("https://app.example.com", host, ("https://app.example.com",))
    assert origin_allowed("http://evil.example", host, ("*",))


async def test_a_cross_origin_browser_is_403_even_with_a_key(keyed: VoiceServer) -> None:
    headers = {**bearer(KEY), "Origin": "http://evil.example"}
    status, body = await refused(ws_url(keyed), additional_headers=headers)
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    same = {**bearer(KEY), "Origin": f"http://127.0.0.1:{keyed.port}"}
    async with websockets.connect(ws_url(keyed), additional_headers=same) as ws:
        await created(ws)
    keyed.gate.allowed_origins = ("http://evil.example",)
    async with websockets.connect(ws_url(keyed), additional_headers=headers) as ws:
        await created(ws)


def test_no_keys_means_loopback_only() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert exposure_refusal(host, keys=False, allow_unauthenticated=False) is None
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "voice.example.com"):
        why = exposure_refusal(host, keys=False, allow_unauthenticated=False)
        assert why is not None and "server.api_keys" in why and "allow_unauthenticated" in why
        assert exposure_refusal(host, keys=True, allow_unauthenticated=False) is None
        assert exposure_refusal(host, keys=False, allow_unauthenticated=True) is None


async def test_the_server_refuses_to_listen_openly() -> None:
    from pipeline.errors import ConfigError

    server = VoiceServer(base_config(), fake_engines(["hi"], ["Hello."]))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without API keys"):
        await server.start("0.0.0.0", 0)
    await server.stop()


# ------------------------------------------------------------------ Twilio


def test_twilio_signature_vector() -> None:
    token, url = "12345", "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"To": "+18005551212", "CallSid": "CA1234567890ABCDE", "Digits": "1234"}
    data = url + "CallSidCA1234567890ABCDE" + "Digits1234" + "To+18005551212"  # sorted by name
    expected = base64.b64encode(hmac.new(b"12345", data.encode(), hashlib.sha1).digest()).decode()
    assert twilio_signature.signature(token, url, params) == expected
    assert twilio_signature.is_valid(token, url, expected, params)
    assert not twilio_signature.is_valid(token, url, expected, {**params, "Digits": "1235"})
    assert not twilio_signature.is_valid(token, url, None, params)
    wss = "wss://voice.example.com/v1/twilio/media-stream"
    assert (
        twilio_signature.signature(token, wss)
        == base64.b64encode(hmac.new(b"12345", wss.encode(), hashlib.sha1).digest()).decode()
    )


async def test_twilio_streams_need_twilio_signature() -> None:
    server = await running(**{"twilio.auth_token": "tw-token"})
    try:
        url = ws_url(server, "/v1/twilio/media-stream")
        assert (await refused(url))[0] == 403
        assert (await refused(url, additional_headers=bearer(KEY)))[0] == 403  # keys: no
        bad = {"X-Twilio-Signature": twilio_signature.signature("other", url)}
        assert (await refused(url, additional_headers=bad))[0] == 403
        good = {"X-Twilio-Signature": twilio_signature.signature("tw-token", url)}
        async with websockets.connect(url, additional_headers=good):
            pass
        server.gate.twilio_url = "wss://voice.example.com"  # behind a proxy
        assert (await refused(url, additional_headers=good))[0] == 403
        public = "wss://voice.example.com/v1/twilio/media-stream"
        proxied = {"X-Twilio-Signature": twilio_signature.signature("tw-token", public)}
        async with websockets.connect(url, additional_headers=proxied):
            pass
    finally:
        await server.stop()


# ------------------------------------------------------------------ limits


async def test_sessions_per_key_are_capped() -> None:
    server = await running(**{"server.max_sessions_per_key": "1"})
    try:
        secret = await mint(server, KEY, {})
        async with websockets.connect(ws_url(server), additional_headers=bearer(KEY)) as ws:
            await created(ws)
            status, body = await refused(ws_url(server), additional_headers=bearer(KEY))
            assert status == 429 and "server.max_sessions_per_key" in body["error"]["message"]
            # a secret counts against the key that minted it; another key has its own budget
            assert (await refused(ws_url(server), additional_headers=bearer(secret)))[0] == 429
            async with websockets.connect(ws_url(server), additional_headers=bearer(OTHER)) as o:
                await created(o)
    finally:
        await server.stop()


def test_deadlines_decide() -> None:
    limits = SessionLimits(max_session_s=10.0, idle_s=3.0)
    assert due(0.0, None, 2.9, limits) is None
    assert due(0.0, None, 3.0, limits) == idle_reason(3.0)
    assert due(0.0, 8.0, 10.0, limits) == length_reason(10.0)
    assert due(0.0, 8.0, 9.9, limits) is None
    assert due(0.0, None, 1e9, SessionLimits(max_session_s=0, idle_s=0)) is None


async def test_session_length_and_idle_limits_on_virtual_time() -> None:
    clock = VirtualClock()
    idle = Session(fake_engines(["hi"], ["Hello."]), clock=clock, limits=SessionLimits(idle_s=3))
    watch = asyncio.create_task(enforce(idle))
    await clock.advance(2)
    idle.heard_from_client()
    await clock.advance(2.5)
    assert idle.closed_reason is None
    await clock.advance(0.5)
    assert idle.closed_reason == "idle timeout: nothing from the client for 3 s (limits.idle_s)"
    await watch

    chatty = Session(
        fake_engines(["hi"], ["Hello."]),
        clock=clock,
        limits=SessionLimits(max_session_s=10, idle_s=3),
    )
    watch = asyncio.create_task(enforce(chatty))
    for _ in range(4):
        await clock.advance(2)
        chatty.heard_from_client()
    assert chatty.closed_reason is None
    await clock.advance(2)
    assert chatty.closed_reason == "session length limit (10 s, limits.max_session_s) reached"
    await watch


async def test_the_server_closes_sessions_past_their_limits() -> None:
    server = await running(**{"limits.max_session_s": "0.3", "limits.idle_s": "0"})
    try:
        async with websockets.connect(ws_url(server), additional_headers=bearer(KEY)) as ws:
            await created(ws)
            assert await close_reason(ws) == length_reason(0.3)
        server.config.limits.max_session_s, server.config.limits.idle_s = 0, 0.2
        async with websockets.connect(ws_url(server), additional_headers=bearer(KEY)) as ws:
            await created(ws)
            assert await close_reason(ws) == idle_reason(0.2)
        reasons = [r["closed_reason"] for r in server.ended.values()]
        assert reasons[-2:] == [length_reason(0.3), idle_reason(0.2)]  # the transcripts say why
    finally:
        await server.stop()
