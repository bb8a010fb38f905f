"""The call registry (``voice/calls.py``) alone: the decisions it takes for an incoming call,
with a minimal transport-side :class:`Call` that records what it was told (the real ones —
Twilio, WebRTC, SIP — are tested end to end in ``test_call_control.py`` and the SIP tests)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent

from pipeline.clock import settle
from voice.calls import CallError, CallRegistry, CallState, WebhookSettings, sign


class PhoneCall:
    transport = "sip"
    audio_rate = 8000

    def __init__(self, call_id: str, *, busy: bool = False) -> None:
        self.call_id = call_id
        self.headers = [("From", "<sip:alice@127.0.0.1>"), ("X-Tenant", "a")]
        self.state = CallState.INCOMING
        self.connection = None
        self.told: list[tuple[str, Any]] = []
        self.busy = busy
        self.gate = asyncio.Event()
        self.gate.set()

    async def accept(self, session: dict[str, Any] | None) -> None:
        self.told.append(("accept", session))
        await self.gate.wait()
        if self.busy:
            raise CallError(503, "the server is full", "server_busy")
        self.state = CallState.ACTIVE

    async def reject(self, status: int, reason: str) -> None:
        self.told.append(("reject", status))
        self.state = CallState.ENDED

    async def refer(self, target_uri: str) -> None:
        self.told.append(("refer", target_uri))

    async def hangup(self, reason: str) -> None:
        self.told.append(("hangup", reason))

    async def send_dtmf(self, digits: str) -> None:
        self.told.append(("dtmf", digits))


def registry(webhook: WebhookSettings | None = None, **kw: Any) -> CallRegistry:
    def refuse(session: dict[str, Any]) -> None:
        if "bogus" in session:
            raise CallError(400, "unknown parameter 'session.bogus'", "unknown_parameter")

    return CallRegistry(
        open_session=lambda call, session: pytest.fail("not opened in these tests"),
        validate=refuse,
        on_end=lambda call: None,
        webhook=webhook,
        now=lambda: 1_764_000_000.0,
        **kw,
    )


async def test_without_a_webhook_a_call_is_accepted_with_the_defaults() -> None:
    calls, call = registry(), PhoneCall("sip_1")
    calls.add(call)
    await calls.incoming(call)
    assert call.told == [("accept", None)] and call.state is CallState.ACTIVE


async def test_a_call_the_server_cannot_take_is_rejected_busy() -> None:
    calls, call = registry(), PhoneCall("sip_1", busy=True)
    calls.add(call)
    await calls.incoming(call)
    assert call.told == [("accept", None), ("reject", 486)]


async def test_past_max_calls_a_call_is_refused() -> None:
    calls = registry(max_calls=1)
    calls.add(PhoneCall("sip_1"))
    with pytest.raises(CallError) as refused:
        calls.add(PhoneCall("sip_2"))
    assert refused.value.status == 503


async def test_the_webhook_payload_is_openais_and_signed() -> None:
    posted: list[tuple[str, bytes, dict[str, str]]] = []

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        posted.append((url, body, dict(headers)))
        return 200

    hook = WebhookSettings(url="http://127.0.0.1:9/hook", secret="plain-secret", accept_timeout=5)
    calls, call = registry(hook, post=post), PhoneCall("sip_1")
    calls.add(call)
    waiting = asyncio.create_task(calls.incoming(call))
    await settle()
    ((url, body, headers),) = posted
    assert url == "http://127.0.0.1:9/hook"
    event = RealtimeCallIncomingWebhookEvent.model_validate(json.loads(body), strict=True)
    assert event.data.call_id == "sip_1" and event.created_at == 1_764_000_000
    assert [(h.name, h.value) for h in event.data.sip_headers] == call.headers
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "voice-server",
        **sign("plain-secret", event.id, 1_764_000_000, body),
    }
    with pytest.raises(CallError) as refused:
        await calls.accept("sip_1", {"bogus": 1})
    assert refused.value.status == 400 and call.state is CallState.INCOMING
    await calls.accept("sip_1", {"instructions": "Hi."})
    await asyncio.wait_for(waiting, 5)
    assert call.told == [("accept", {"instructions": "Hi."})]


async def test_two_accepts_at_once_answer_the_call_once() -> None:
    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        return 204

    calls = registry(WebhookSettings(url="http://x/", accept_timeout=5), post=post)
    call = PhoneCall("sip_1")
    call.gate.clear()  # the first accept is still answering when the second comes
    calls.add(call)
    waiting = asyncio.create_task(calls.incoming(call))
    first = asyncio.create_task(calls.accept("sip_1", {}))
    await settle()
    with pytest.raises(CallError) as refused:
        await calls.accept("sip_1", {})
    assert refused.value.status == 409
    with pytest.raises(CallError):
        await calls.reject("sip_1", 486)
    call.gate.set()
    await asyncio.wait_for(first, 5)
    await asyncio.wait_for(waiting, 5)
    assert call.told == [("accept", {})]


@pytest.mark.parametrize("failure", [OSError("connection refused"), 500])
async def test_a_webhook_that_fails_rejects_the_call(failure: OSError | int) -> None:
    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        if isinstance(failure, OSError):
            raise failure
        return failure

    calls, call = registry(WebhookSettings(url="http://x/"), post=post), PhoneCall("sip_1")
    calls.add(call)
    await calls.incoming(call)
    assert call.told == [("reject", 503)]


async def test_a_call_that_ends_while_waiting_stops_the_wait() -> None:
    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        return 200

    calls = registry(WebhookSettings(url="http://x/", accept_timeout=60), post=post)
    call = PhoneCall("sip_1")
    calls.add(call)
    waiting = asyncio.create_task(calls.incoming(call))
    await settle()
    call.state = CallState.ENDED  # the caller hung up (CANCEL)
    calls.ended(call)
    await asyncio.wait_for(waiting, 5)
    assert call.told == [] and len(calls) == 0
    with pytest.raises(CallError) as gone:
        calls.get("sip_1")
    assert gone.value.status == 404
