"""Call control, OpenAI-compatible, with the official ``openai`` SDK against the in-process server
(fake engines): a Twilio media stream is a call that a Realtime WebSocket opened with
``?call_id=`` watches and steers, that a webhook is told of (``realtime.call.incoming``, signed
as OpenAI signs, checked by the SDK's own ``webhooks.unwrap``) and that ``/accept``,
``/reject``, ``/refer`` and ``/hangup`` decide. Everything on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest
import websockets
from aiohttp import web

from transports import twilio_signature
from voice.calls import CallState
from voice.server import VoiceServer

from .conftest import test_config as base_config
from .fakes import fake_engines
from .realtime_schema import validate_server_event

pytestmark = [pytest.mark.e2e]

SECRET = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes....").decode()
STREAM_SID = "MZcalls"
WAIT = 10.0


async def running(engines: Any = None, **settings: Any) -> VoiceServer:
    config = base_config()
    for dotted, value in settings.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    server = VoiceServer(config, engines or fake_engines(["unused"], ["Your order is on its way."]))
    await server.start("127.0.0.1", 0)
    return server


@contextlib.asynccontextmanager
async def serving(engines: Any = None, **settings: Any) -> AsyncIterator[VoiceServer]:
    server = await running(engines, **settings)
    try:
        yield server
    finally:
        await server.stop()


def sdk(server: VoiceServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key="sk-test", max_retries=0
    )


class Line:
    """Twilio's side of a media stream, as much as these tests need: ``connected``, ``start``
    (with custom parameters), then whatever the test sends; it keeps what the server sends."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.url = f"ws://127.0.0.1:{port}/v1/twilio/media-stream"
        self.headers = headers or {}
        self.ws: Any = None
        self.received: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> Line:
        self.ws = await websockets.connect(self.url, additional_headers=self.headers)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self.ws.close()

    async def send(self, event: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"event": event, "streamSid": STREAM_SID, **fields}))

    async def start(self, parameters: dict[str, str] | None = None) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call"}))
        start = {
            "streamSid": STREAM_SID,
            "callSid": "CAcalls",
            "accountSid": "ACcalls",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"CallSid": "CAcalls", "From": "+15550100", **(parameters or {})},
        }
        await self.send("start", start=start)

    async def press(self, digits: str) -> None:
        for digit in digits:
            await self.send("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    async def closed(self) -> tuple[int | None, str]:
        async with asyncio.timeout(WAIT):
            await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason

    async def wait_for(self, test: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(test)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("event") == kind]

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                async with self._changed:
                    self.received.append(json.loads(message))
                    self._changed.notify_all()


class Receiver:
    """A webhook receiver on loopback: keeps each delivery (body, headers), answers ``status``,
    and may act on it (``on_event``) once it has answered."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.deliveries: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def next(self) -> tuple[bytes, dict[str, str]]:
        async with asyncio.timeout(WAIT):
            return await self.deliveries.get()

    async def _hook(self, request: web.Request) -> web.Response:
        await self.deliveries.put((await request.read(), dict(request.headers)))
        return web.Response(status=self.status)


def twilio_call_id(server: VoiceServer) -> str:
    (call,) = [c for c in server.call_control.registry if c.transport == "twilio"]
    return call.call_id


async def calls(server: VoiceServer, count: int) -> None:
    """Wait until the server has ``count`` live calls."""
    async with asyncio.timeout(WAIT):
        await server.call_control.registry.wait(lambda registry: len(registry) == count)


async def next_event(conn: Any, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            event = (await conn.recv()).to_dict()
            seen.append(event)
            if event["type"] == kind:
                return event


# ------------------------------------------------------------------ watching a live call


async def test_a_twilio_call_is_watched_and_steered_and_hears_the_keypad() -> None:
    engines = fake_engines(["unused"], ["Your order is on its way."])
    async with serving(engines) as server, Line(server.port) as line, sdk(server) as client:
        await line.start({"instructions": "You answer the shop's phone."})
        await calls(server, 1)
        call_id = twilio_call_id(server)
        assert call_id.startswith("tw_")
        async with client.realtime.connect(call_id=call_id) as watcher:
            seen: list[dict[str, Any]] = []
            created = await next_event(watcher, "session.created", seen)
            assert created["session"]["instructions"] == "You answer the shop's phone."
            await watcher.session.update(session={"type": "realtime", "instructions": "Be brief."})
            updated = await next_event(watcher, "session.updated", seen)
            assert updated["session"]["instructions"] == "Be brief."
            await line.press("7#")
            done = await next_event(watcher, "response.done", seen)
            assert done["response"]["status"] == "completed"
            for event in seen:
                validate_server_event(event)
            types = [e["type"] for e in seen]
            assert "response.output_audio.delta" not in types  # the caller hears the audio
            dtmf = [e for e in seen if e["type"] == "input_audio_buffer.dtmf_event_received"]
            assert [e["event"] for e in dtmf] == ["7", "#"]
            added = [e["item"] for e in seen if e["type"] == "conversation.item.added"]
            assert added[0]["content"][0]["text"] == "[keypad] 7 #"
            prompt = engines.llm.seen[0]  # type: ignore[attr-defined]
            assert prompt[0].content == "Be brief." and prompt[-1].content == "[keypad] 7 #"
            await line.wait_for(lambda: bool(line.of("mark")))  # the reply reached the caller
            assert line.of("media")
            await client.realtime.calls.hangup(call_id)
            code, reason = await line.closed()
            assert (code, reason) == (1000, "hung up by the client")
            with pytest.raises(openai.NotFoundError):  # the call is over
                await client.realtime.calls.hangup(call_id)


async def test_a_watcher_that_falls_behind_is_dropped_and_the_call_goes_on() -> None:
    async with (
        serving(calls__max_watcher_events=2) as server,
        Line(server.port) as line,
    ):
        await line.start()
        await calls(server, 1)
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?call_id={twilio_call_id(server)}"
        async with websockets.connect(url) as watcher:
            assert json.loads(await watcher.recv())["type"] == "session.created"
            await line.press("#")  # three events at once: the key, the item, the response
            async with asyncio.timeout(WAIT):
                await watcher.wait_closed()
            assert watcher.close_code == 1008
            assert watcher.close_reason == "watcher is not reading: too many events pending"
        await line.wait_for(lambda: bool(line.of("mark")))  # the caller is still answered
        assert not line.ws.close_code


# ------------------------------------------------------------------ the webhook


async def test_the_webhook_is_told_and_accept_configures_the_call() -> None:
    async with Receiver() as hook:  # noqa: SIM117 (its URL is needed below)
        async with (
            serving(calls__webhook_url=hook.url, calls__webhook_secret=SECRET) as server,
            Line(server.port) as line,
            sdk(server) as client,
        ):
            await line.start()
            body, headers = await hook.next()
            event = client.webhooks.unwrap(body, headers, secret=SECRET)
            assert event.type == "realtime.call.incoming"
            call_id = event.data.call_id
            sip_headers = {h.name: h.value for h in event.data.sip_headers}
            assert sip_headers["X-Twilio-CallSid"] == "CAcalls"
            assert sip_headers["X-Twilio-From"] == "+15550100"
            call = server.call_control.registry.get(call_id)
            assert call.state is CallState.INCOMING
            await line.press("5")  # held: the keypad does not reach the session yet
            with pytest.raises(websockets.InvalidStatus) as early:  # nothing to watch yet
                async with client.realtime.connect(call_id=call_id):
                    pass
            assert early.value.response.status_code == 409
            await client.realtime.calls.accept(
                call_id, type="realtime", instructions="You are the night desk."
            )
            assert call.state is CallState.ACTIVE
            assert call.connection is not None
            assert call.connection.session.settings.instructions == "You are the night desk."
            assert call.connection.session.settings.output_rate == 8000
            assert not call.connection.session.conversation.items
            with pytest.raises(openai.ConflictError):  # accepted once
                await client.realtime.calls.accept(call_id, type="realtime")
            await line.press("#")
            await line.wait_for(lambda: bool(line.of("mark")))
            items = call.connection.session.conversation.items
            assert items[0].text == "[keypad] #"


async def test_a_bad_signature_would_be_caught_by_the_sdk() -> None:
    async with Receiver() as hook:  # noqa: SIM117 (its URL is needed below)
        async with (
            serving(calls__webhook_url=hook.url, calls__webhook_secret=SECRET) as server,
            Line(server.port) as line,
            sdk(server) as client,
        ):
            await line.start()
            body, headers = await hook.next()
            other = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()
            with pytest.raises(openai.InvalidWebhookSignatureError):
                client.webhooks.unwrap(body, headers, secret=other)
            with pytest.raises(openai.InvalidWebhookSignatureError):
                client.webhooks.unwrap(body.replace(b"CAcalls", b"CAother"), headers, secret=SECRET)


async def test_reject_ends_the_call_with_the_status() -> None:
    async with Receiver() as hook:  # noqa: SIM117 (its URL is needed below)
        async with (
            serving(calls__webhook_url=hook.url) as server,
            Line(server.port) as line,
            sdk(server) as client,
        ):
            await line.start()
            body, headers = await hook.next()
            assert "webhook-signature" not in {k.lower() for k in headers}  # no secret: unsigned
            call_id = json.loads(body)["data"]["call_id"]
            await client.realtime.calls.reject(call_id, status_code=486)
            code, reason = await line.closed()
            assert code == 1000 and reason == "call rejected (486): rejected by the client"
            await calls(server, 0)


async def test_a_call_not_decided_in_time_is_rejected() -> None:
    async with Receiver() as hook:  # noqa: SIM117 (its URL is needed below)
        async with (
            serving(calls__webhook_url=hook.url, calls__accept_timeout=0.3) as server,
            Line(server.port) as line,
        ):
            await line.start()
            await hook.next()
            _, reason = await line.closed()
            assert reason == "call rejected (408): not accepted in time"
            await calls(server, 0)


@pytest.mark.parametrize("status", [500, 404])
async def test_a_webhook_that_fails_rejects_the_call_at_once(status: int) -> None:
    async with Receiver(status) as hook:  # noqa: SIM117 (its URL is needed below)
        async with serving(calls__webhook_url=hook.url) as server, Line(server.port) as line:
            await line.start()
            _, reason = await line.closed()
            assert reason == "call rejected (503): webhook delivery failed"


async def test_an_unreachable_webhook_rejects_the_call() -> None:
    async with Receiver() as hook:
        url = hook.url  # (closed below: nothing listens there any more)
    async with serving(calls__webhook_url=url) as server, Line(server.port) as line:
        await line.start()
        _, reason = await line.closed()
        assert reason == "call rejected (503): webhook delivery failed"


# ------------------------------------------------------------------ bad requests


async def post(server: VoiceServer, path: str, body: bytes | str | None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.port}/v1/realtime/calls/{path}"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith("{") else text


async def test_bad_call_control_requests_get_clear_errors_and_the_call_goes_on() -> None:
    async with serving() as server, Line(server.port) as line:
        await line.start()
        await calls(server, 1)
        cid = twilio_call_id(server)
        cases: list[tuple[str, bytes | str | None, int, str, str | None]] = [
            ("tw_unknown/accept", "{}", 404, "call_not_found", "call_id"),
            (f"{cid}/accept", json.dumps({"type": "realtime"}), 409, "call_not_incoming", None),
            (f"{cid}/accept", None, 400, "invalid_request_body", None),
            (f"{cid}/accept", "[1]", 400, "invalid_request_body", None),
            (f"{cid}/accept", "{not json", 400, "invalid_json", None),
            (f"{cid}/accept", '{"x": "\\ud800"}', 400, "invalid_request_body", None),
            (f"{cid}/accept", "x" * (65 << 10), 413, "body_too_large", None),
            (f"{cid}/reject", json.dumps({"status_code": 200}), 400, "invalid_value", "status_code"),
            (f"{cid}/reject", json.dumps({"status_code": "486"}), 400, "invalid_value", None),
            (f"{cid}/reject", json.dumps({"why": 1}), 400, "unknown_parameter", "why"),
            (f"{cid}/reject", "{}", 409, "call_not_incoming", None),
            (f"{cid}/refer", "{}", 400, "invalid_value", "target_uri"),
            (f"{cid}/refer", json.dumps({"target_uri": "http://x"}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "sip:a b@x"}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "sip:a\x00@x"}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "sip:\u00e9@x"}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "sip:<a>@x"}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "tel:+1" + "5" * 600}), 400, "invalid_value", None),
            (f"{cid}/refer", json.dumps({"target_uri": "sip:desk@example.com"}), 400,
             "refer_not_supported", None),
        ]  # fmt: skip
        for path, body, status, code, param in cases:
            got, answer = await post(server, path, body)
            assert got == status, (path, body, answer)
            if status != 413:
                assert answer["error"]["code"] == code, (path, body, answer)
                assert param is None or answer["error"]["param"] == param, answer
        assert not line.ws.close_code  # the call goes on
        assert server.call_control.registry.get(cid).state is CallState.ACTIVE


async def test_a_session_configuration_accept_would_refuse_is_a_400_naming_it() -> None:
    async with Receiver() as hook:  # noqa: SIM117 (its URL is needed below)
        async with (
            serving(calls__webhook_url=hook.url) as server,
            Line(server.port) as line,
            sdk(server) as client,
        ):
            await line.start()
            call_id = json.loads((await hook.next())[0])["data"]["call_id"]
            with pytest.raises(openai.BadRequestError) as refused:
                await client.realtime.calls.accept(
                    call_id, type="realtime", extra_body={"no_such_field": 1}
                )
            assert refused.value.code == "unknown_parameter"
            assert refused.value.param == "session.no_such_field"
            with pytest.raises(openai.BadRequestError) as refused:
                await client.realtime.calls.accept(
                    call_id, type="realtime", extra_body={"instructions": 5}
                )
            assert refused.value.param == "session.instructions"
            call = server.call_control.registry.get(call_id)
            assert call.state is CallState.INCOMING  # still waiting: a good accept works
            await client.realtime.calls.accept(call_id, type="realtime", instructions="Hello.")
            assert call.state is CallState.ACTIVE


@pytest.mark.parametrize("call_id", ["tw_nothing", "", "%00"])
async def test_a_watcher_for_an_unknown_call_is_refused(call_id: str) -> None:
    async with serving() as server:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?call_id={call_id}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 404
        body = json.loads(refused.value.response.body or b"{}")
        assert body["error"]["code"] == "call_not_found"


# ------------------------------------------------------------------ Twilio out of order


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("media", "Twilio protocol error: message before the stream's start"),
        ("start", f"Twilio protocol error: stream {STREAM_SID} has already started"),
    ],
)
async def test_twilio_messages_out_of_order_close_the_stream_with_the_reason(
    first: str, reason: str
) -> None:
    async with serving() as server, Line(server.port) as line:
        if first == "media":
            await line.send("media", media={"payload": "//8="})
        else:
            await line.start()
            await line.start()
        code, got = await line.closed()
        assert (code, got) == (1002, reason)


# ------------------------------------------------------------------ who may control a call


async def test_with_api_keys_a_phone_call_is_controlled_by_a_key_not_a_client_secret() -> None:
    key, token = "sk-test-call-control-key-01234", "tw-token"
    async with serving(server__api_keys=key, twilio__auth_token=token) as server:
        url = f"ws://127.0.0.1:{server.port}/v1/twilio/media-stream"
        signed = {"X-Twilio-Signature": twilio_signature.signature(token, url)}
        async with Line(server.port, signed) as line:
            await line.start()
            await calls(server, 1)
            cid = twilio_call_id(server)
            base = f"http://127.0.0.1:{server.port}/v1"
            async with openai.AsyncOpenAI(base_url=base, api_key="sk-wrong", max_retries=0) as c:
                with pytest.raises(openai.AuthenticationError):
                    await c.realtime.calls.hangup(cid)
            async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0) as client:
                secret = await client.realtime.client_secrets.create()
                async with openai.AsyncOpenAI(
                    base_url=base, api_key=secret.value, max_retries=0
                ) as browser:
                    with pytest.raises(openai.NotFoundError):
                        await browser.realtime.calls.hangup(cid)
                    with pytest.raises(websockets.InvalidStatus) as refused:
                        async with browser.realtime.connect(call_id=cid, max_retries=0):
                            pass
                    assert refused.value.response.status_code == 404
                assert not line.ws.close_code  # the call went on
                await client.realtime.calls.hangup(cid)
            _, reason = await line.closed()
            assert reason == "hung up by the client"
