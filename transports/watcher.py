"""A Realtime WebSocket that watches and steers a live call (``GET /v1/realtime?call_id=…``).

The call's audio travels on its own transport (a WebRTC track, a Twilio stream, SIP RTP); this
socket carries only the Realtime events, as OpenAI's "sideband" connection does: the client gets
``session.created`` with the call's configuration, then every event of the call's session from
that moment on (transcripts, responses, function calls, ``input_audio_buffer.dtmf_event_received``
…) except the reply audio itself (``response.output_audio.delta``: the caller hears it, the
watcher reads its transcript), and may send any client event (``session.update``,
``response.create``, ``conversation.item.create`` with a function's output …), applied to the
call's session as if the call's own client had sent it.

Several watchers may follow one call; each has its own :class:`RealtimeConnection` over the
call's shared configuration, and its own bounded queue (``max_pending`` events): a watcher that
stops reading is dropped (close 1008, "watcher is not reading"), the call goes on. A watcher that
leaves changes nothing of the call. When the call ends the socket closes (1000) with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from pipeline import messages as m
from pipeline.session import Session
from pipeline.tasks import cancel_and_wait

from .realtime.connection import RealtimeConnection, error_event

log = logging.getLogger("voice.transport.watcher")
NOT_READING = "watcher is not reading: too many events pending"


class _Feed:
    """The session's events for one watcher (a session observer), bounded."""

    def __init__(self, session: Session, max_pending: int) -> None:
        self.session = session
        self.queue: asyncio.Queue[m.SessionEvent] = asyncio.Queue(max_pending)
        self.overflowed = asyncio.Event()
        session.observers.append(self)

    def __call__(self, session: Session, event: m.SessionEvent) -> None:
        if isinstance(event, m.ReplyAudio) or self.overflowed.is_set():
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.session.observers.remove(self)


async def serve_watcher(
    request: web.Request,
    conn: RealtimeConnection,
    *,
    call_id: str,
    max_frame_bytes: int,
    max_pending: int = 1024,
    send_timeout: float = 10.0,
    heartbeat: float = 30.0,
) -> web.WebSocketResponse:
    """Watch the call whose session ``conn`` renders until either side leaves. Cancel-safe."""
    ws = web.WebSocketResponse(
        max_msg_size=max_frame_bytes, protocols=("realtime",), heartbeat=heartbeat
    )
    await ws.prepare(request)
    session = conn.session
    feed = _Feed(session, max_pending)
    slog = logging.LoggerAdapter(log, {"session": session.id})
    slog.info("call %s: watcher %s connected", call_id, request.remote)

    async def send(events: list[dict[str, Any]]) -> None:
        for event in events:
            if ws.closed:
                return
            async with asyncio.timeout(send_timeout):
                await ws.send_str(json.dumps(event, separators=(",", ":")))

    reason = "watcher disconnected"
    tasks: list[asyncio.Task[str]] = []
    try:
        await send(conn.hello())
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(_write(feed, conn, send), name=f"watch-{call_id}-writer"),
            loop.create_task(_read(ws, conn, send), name=f"watch-{call_id}-reader"),
            loop.create_task(_overflow(feed), name=f"watch-{call_id}-overflow"),
        ]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finished = next(iter(done))
        reason = _why(finished)
    except TimeoutError:
        reason = "watcher is not reading: a send timed out"
    finally:
        feed.detach()
        await cancel_and_wait(tasks)
        code = WSCloseCode.POLICY_VIOLATION if reason == NOT_READING else WSCloseCode.OK
        slog.info("call %s: watcher left (%s)", call_id, reason)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(send_timeout):
                await ws.close(code=code, message=reason.encode()[:120])
    return ws


def _why(task: asyncio.Task[str]) -> str:
    exc = task.exception()
    if isinstance(exc, TimeoutError):
        return "watcher is not reading: a send timed out"
    if exc is not None:
        return f"cannot send to the watcher: {exc!r}"
    return task.result()


async def _write(feed: _Feed, conn: RealtimeConnection, send: Any) -> str:
    """The session's events, rendered; returns once the call's session has closed."""
    if feed.session.closed_reason is not None:
        return f"call ended: {feed.session.closed_reason}"
    while True:
        event = await feed.queue.get()
        await send(conn.render(event))
        if isinstance(event, m.SessionClosed):
            return f"call ended: {event.reason}"


async def _overflow(feed: _Feed) -> str:
    await feed.overflowed.wait()
    return NOT_READING


async def _read(ws: web.WebSocketResponse, conn: RealtimeConnection, send: Any) -> str:
    """The watcher's client events, applied to the call's session; returns why it left."""
    while True:
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            await send(conn.receive(msg.data))
        elif msg.type == WSMsgType.BINARY:
            await send(
                [
                    error_event(
                        "binary frames are not supported: send JSON text events",
                        "invalid_frame",
                        "invalid_request_error",
                        None,
                        None,
                    )
                ]
            )
        elif msg.type == WSMsgType.ERROR:
            return f"WebSocket error: {ws.exception()}"
        else:
            if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
                return "frame too large"
            return "watcher disconnected"
