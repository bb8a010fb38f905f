"""Peers for the hand-off tests, all on loopback: this server itself (fake engines) as an OpenAI
Realtime upstream, a scripted upstream that sends exactly the frames a test gives it (for
the faults a correct server never makes), and a front session wired to a relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from pipeline import messages as m
from pipeline.engines import Engines
from pipeline.handoff.base import HandoffSettings, UpstreamSettings
from pipeline.handoff.relay import opener
from pipeline.session import Session, SessionSettings
from voice.server import VoiceServer

from .conftest import test_config
from .fakes import silence, tone

E = TypeVar("E")
WITHIN = 20.0
"""Seconds any awaited outcome gets (real time, loopback, fake engines: it takes far less)."""


def speech(seconds: float = 0.8, rate: int = 24_000) -> np.ndarray:
    """A loud tone (speech to the fake VAD) and the silence that ends the turn."""
    return np.concatenate([tone(seconds, rate), silence(1.5, rate)])


@contextlib.asynccontextmanager
async def peer_server(engines: Engines, **overrides: str) -> AsyncIterator[VoiceServer]:
    """This server with fake engines on a loopback port: a real Realtime upstream."""
    config = test_config()
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    server = VoiceServer(config, engines)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop()


class ScriptedUpstream:
    """A WebSocket upstream that answers each client message with the frames ``script``
    returns for it (after ``hello`` on connect); records what it received."""

    def __init__(
        self,
        hello: list[str],
        script: Callable[[dict[str, Any]], list[str]] = lambda event: [],
    ) -> None:
        self.hello, self.script = hello, script
        self.received: list[dict[str, Any]] = []
        self.port = 0
        self.connected = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime"

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connected.set()
        for frame in self.hello:
            await ws.send_str(frame)
        async for message in ws:
            event = json.loads(message.data)
            self.received.append(event)
            for frame in self.script(event):
                if frame == "CLOSE":
                    await ws.close()
                    return ws
                await ws.send_str(frame)
        return ws

    async def __aenter__(self) -> ScriptedUpstream:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def frame(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": "event_1", **fields})


CREATED = frame("session.updated", session={"type": "realtime"})
"""What a scripted upstream says first (the answer to the relay's ``session.update``)."""


class Front:
    """A session of this server (fake engines, real time) whose remote engine is the
    upstream at ``url``; records the events it emits."""

    def __init__(
        self,
        engines: Engines,
        url: str,
        *,
        settings: SessionSettings | None = None,
        fallback: bool = True,
        key: str = "",
        **upstream: Any,
    ) -> None:
        self.session = Session(engines, settings or SessionSettings())
        self.upstream = UpstreamSettings(url, key=key, **upstream)
        self.handoff = HandoffSettings({"openai-realtime": self.upstream}, fallback=fallback)
        self.session.open_remote = opener(self.handoff)
        self.events: list[Any] = []
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Front:
        self._tasks = [
            asyncio.create_task(self.session.run()),
            asyncio.create_task(self._collect()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.session.close("test over")
        async with asyncio.timeout(WITHIN):
            await self._tasks[0]
        self._tasks[1].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[1]

    async def _collect(self) -> None:
        while True:
            event = await self.session.next_event()
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def remote(self) -> None:
        """Switch to the remote engine and wait until it knows the conversation."""
        self.session.switch_engine("openai-realtime")
        relay = self.session.remote
        assert relay is not None
        async with asyncio.timeout(WITHIN):
            await relay.ready.wait()  # type: ignore[attr-defined]

    async def until(self, predicate: Callable[[], Any], what: str) -> Any:
        try:
            async with asyncio.timeout(WITHIN), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError(f"no {what} within {WITHIN} s; got {self.types()}") from None
        return predicate()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def done(self, n: int = 1) -> list[m.ReplyDone] | None:
        done = self.of(m.ReplyDone)
        return done if len(done) >= n else None

    def errors(self, code: str) -> list[m.SessionError]:
        return [e for e in self.of(m.SessionError) if e.code == code]

    def types(self) -> list[str]:
        return [type(e).__name__ for e in self.events if not isinstance(e, m.ReplyAudio)]

    def texts(self) -> list[tuple[str, str]]:
        return [(i.role, i.text) for i in self.session.conversation.items if i.type == "message"]
