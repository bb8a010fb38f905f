"""The Realtime protocol over a WebSocket (``GET /v1/realtime``), on aiohttp.

A thin adapter: text frames go to :class:`transports.realtime.connection.RealtimeConnection`,
its events come back as text frames. Frames larger than ``max_frame_bytes`` close the socket
(1009); events larger than ``max_event_bytes`` get an ``error`` event and the session goes on.
A send that cannot complete within ``send_timeout`` (a client that stopped reading) closes it.
The session's lifecycle (run, pump, teardown) is :class:`~transports.runner.SessionRunner`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from pipeline import messages as m

from .realtime.connection import RealtimeConnection, error_event
from .runner import SessionRunner

log = logging.getLogger("voice.transport.ws")
NOT_READING = "client is not reading: a send timed out"


async def serve_realtime(
    request: web.Request,
    open_connection: Callable[[], RealtimeConnection],
    *,
    max_frame_bytes: int,
    send_timeout: float = 10.0,
    heartbeat: float = 30.0,
) -> web.WebSocketResponse:
    """Run one Realtime session over the request's WebSocket until either side leaves. A ping
    goes out every ``heartbeat`` seconds; a client that does not answer within half of that is
    dropped. The socket closes with 1000 and the session's reason (1011 when the session
    failed)."""
    ws = web.WebSocketResponse(
        max_msg_size=max_frame_bytes, protocols=("realtime",), heartbeat=heartbeat
    )
    await ws.prepare(request)
    conn = open_connection()
    session = conn.session
    log.info("session %s: WebSocket client %s connected", session.id, request.remote)

    async def send(events: list[dict[str, Any]]) -> None:
        for event in events:
            if ws.closed:  # the client has gone: the reader says why
                return
            await ws.send_str(json.dumps(event, separators=(",", ":")))

    async def deliver(event: m.SessionEvent) -> None:
        await send(conn.render(event))

    async def read() -> str:
        try:
            await _read(ws, conn, send, send_timeout)
        except TimeoutError:
            return NOT_READING
        return _close_reason(ws)

    runner = SessionRunner(session, deliver, log=log, peer="client", send_timeout=send_timeout)
    try:
        async with asyncio.timeout(send_timeout):  # session.created comes first
            await send(conn.hello())
    except TimeoutError:
        await runner.stop(NOT_READING)
    else:
        await runner.serve(read)
    finally:
        code = WSCloseCode.INTERNAL_ERROR if session.failed else WSCloseCode.OK
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(send_timeout):
                await ws.close(code=code, message=(session.closed_reason or "").encode()[:120])
    return ws


async def _read(
    ws: web.WebSocketResponse,
    conn: RealtimeConnection,
    send: Callable[[list[dict[str, Any]]], Awaitable[None]],
    send_timeout: float,
) -> None:
    """Feed the client's frames to the connection until the socket closes; a send slower than
    ``send_timeout`` raises :class:`TimeoutError`."""
    while True:
        msg = await ws.receive()
        if msg.type == WSMsgType.TEXT:
            events = conn.receive(msg.data)
        elif msg.type == WSMsgType.BINARY:
            events = [
                error_event(
                    "binary frames are not supported: send JSON text events",
                    "invalid_frame",
                    "invalid_request_error",
                    None,
                    None,
                )
            ]
        elif msg.type == WSMsgType.ERROR:
            log.info("session %s: WebSocket error: %s", conn.session.id, ws.exception())
            return
        else:  # CLOSE, CLOSING, CLOSED
            return
        async with asyncio.timeout(send_timeout):
            await send(events)


def _close_reason(ws: web.WebSocketResponse) -> str:
    if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
        return "frame too large"
    if isinstance(ws.exception(), TimeoutError):  # aiohttp's heartbeat: no pong in time
        return f"client did not answer a ping: {ws.exception()}"
    if ws.close_code not in (None, WSCloseCode.OK, WSCloseCode.GOING_AWAY):
        return f"client disconnected (close code {ws.close_code})"
    return "client disconnected"
