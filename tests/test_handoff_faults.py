"""Upstream faults: each one gives the client an ``error`` event, nothing hangs, the transcript
so far is kept, and the session falls back to the cascade (which answers the turn left
unanswered) or, with the fallback off, says the notice and ends."""

from __future__ import annotations

import base64
import socket
from typing import Any

import numpy as np

from pipeline import messages as m
from pipeline.context import Item, new_id

from .fakes import fake_engines
from .handoff_peers import CREATED, Front, ScriptedUpstream, frame, peer_server

AUDIO = base64.b64encode(np.full(2400, 5000, dtype="<i2").tobytes()).decode()  # 100 ms
SHORT = {"connect_timeout_s": 0.5, "first_audio_timeout_s": 0.5, "gap_timeout_s": 0.5}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(front: Front, text: str = "hello there") -> None:
    front.session.add_item(Item(new_id("item"), "user", text=text))
    front.session.create_response()


def reply_then(*after: str) -> Any:
    """A response that starts, says a little, then does ``after``."""

    def script(event: dict[str, Any]) -> list[str]:
        if event["type"] != "response.create":
            return []
        return [
            frame("response.created", response={"id": "r1"}),
            frame("response.output_audio_transcript.delta", response_id="r1", item_id="a1",
                  delta="Well, let me"),
            frame("response.output_audio.delta", response_id="r1", item_id="a1", delta=AUDIO),
            *after,
        ]  # fmt: skip

    return script


async def fell_back(front: Front, reason: str) -> None:
    """The client was told, the engine is the cascade again, and it answered the caller."""
    await front.until(lambda: front.errors("upstream_failed"), "the error event")
    (error,) = front.errors("upstream_failed")
    assert reason in error.message, error.message
    await front.until(
        lambda: any(d.item and d.item.text == "Local answer." for d in front.of(m.ReplyDone)),
        "the cascade's answer",
    )
    assert front.session.engine == "cascade" and front.session.remote is None
    assert front.texts()[0] == ("user", "hello there")
    assert front.texts()[-1] == ("assistant", "Local answer.")


def local() -> Any:
    return fake_engines(["x"], ["Local answer."], 20)


async def test_an_unreachable_upstream() -> None:
    url = f"ws://127.0.0.1:{closed_port()}/v1/realtime"
    async with Front(local(), url, **SHORT) as front:
        front.session.add_item(Item(new_id("item"), "user", text="hello there"))
        front.session.switch_engine("openai-realtime")
        await fell_back(front, "cannot connect")


async def test_a_refused_key() -> None:
    async with peer_server(fake_engines(["x"], ["x"]), **{"server.api_keys": "sk-good"}) as peer:
        url = f"ws://127.0.0.1:{peer.port}/v1/realtime"
        async with Front(local(), url, key="sk-wrong", **SHORT) as front:
            front.session.add_item(Item(new_id("item"), "user", text="hello there"))
            relay = front.session.switch_engine("openai-realtime") or front.session.remote
            await fell_back(front, "the API key was refused (HTTP 401)")
    assert relay is not None and relay.failure is not None  # type: ignore[attr-defined]
    assert relay.failure.retryable is False  # type: ignore[attr-defined]


async def test_a_connection_dropped_mid_reply() -> None:
    async with (
        ScriptedUpstream([CREATED], reply_then("CLOSE")) as up,
        Front(local(), up.url, **SHORT) as front,
    ):
        await front.remote()
        ask(front)
        await fell_back(front, "closed the connection")
        failed = front.of(m.ReplyDone)[0]
        assert failed.status == "failed"
        assert front.errors("response_failed")


async def test_a_malformed_message() -> None:
    async with (
        ScriptedUpstream([CREATED], reply_then("{not json")) as up,
        Front(local(), up.url, **SHORT) as front,
    ):
        await front.remote()
        ask(front)
        await fell_back(front, "malformed message from the upstream: invalid JSON")


async def test_an_unknown_message_is_reported_and_the_call_goes_on() -> None:
    done = frame("response.done", response={"id": "r1", "status": "completed"})
    hello = [CREATED, frame("session.brand_new"), frame("session.brand_new")]
    async with (
        ScriptedUpstream(hello, reply_then(done)) as up,
        Front(local(), up.url, **SHORT) as front,
    ):
        await front.remote()
        ask(front)
        (reply,) = await front.until(front.done, "the remote reply")
        (unknown,) = front.errors("upstream_unknown_event")
    assert "'session.brand_new'" in unknown.message
    assert reply.status == "completed" and reply.item is not None
    assert reply.item.text == "Well, let me"
    assert front.session.closed_reason == "test over" and not front.errors("upstream_failed")


async def test_an_upstream_that_never_says_hello() -> None:
    async with ScriptedUpstream([]) as up, Front(local(), up.url, **SHORT) as front:
        front.session.add_item(Item(new_id("item"), "user", text="hello there"))
        front.session.switch_engine("openai-realtime")
        await fell_back(front, "within 0.5 s (connect_timeout_s)")


async def test_an_upstream_that_never_answers() -> None:
    async with ScriptedUpstream([CREATED]) as up, Front(local(), up.url, **SHORT) as front:
        await front.remote()
        ask(front)
        await fell_back(front, "said nothing for 0.5 s (first_audio_timeout_s)")


async def test_an_upstream_that_stalls_mid_reply() -> None:
    async with (
        ScriptedUpstream([CREATED], reply_then()) as up,
        Front(local(), up.url, **SHORT) as front,
    ):
        await front.remote()
        ask(front)
        await fell_back(front, "said nothing for 0.5 s (gap_timeout_s)")
        failed = front.of(m.ReplyDone)[0]
        assert failed.status == "failed" and failed.output_started
        # the transcript keeps what the caller heard of the failed reply
        assert ("assistant", "Well, let me") in front.texts()


async def test_without_fallback_the_caller_hears_the_notice_and_the_session_ends() -> None:
    async with ScriptedUpstream([CREATED], reply_then("CLOSE")) as up:
        engines = fake_engines(["x"], ["never asked"], 20)
        async with Front(engines, up.url, fallback=False, **SHORT) as front:
            await front.remote()
            ask(front)
            await front.until(lambda: front.of(m.SessionClosed), "the end of the session")
            notice = front.handoff.notice
    assert front.session.closed_reason is not None
    assert "the openai-realtime engine failed" in front.session.closed_reason
    assert " ".join(engines.tts.texts) == notice  # type: ignore[attr-defined]
    assert front.texts()[-1] == ("assistant", notice)
    assert engines.llm.seen == []  # type: ignore[attr-defined]
