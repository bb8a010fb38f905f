"""The Realtime protocol over a WebSocket (``GET /v1/realtime``), on aiohttp.

A thin adapter: text frames go to :class:`transports.realtime.connection.RealtimeConnection`,
its events come back as text frames. Frames larger than ``max_frame_bytes`` close the socket
(1009); events larger than ``max_event_bytes`` get an ``error`` event and the session goes on.
A send that cannot complete within ``send_timeout`` (a client that stopped reading) closes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from pipeline.tasks import cancel_and_wait

from .realtime.connection import RealtimeConnection, error_event

log = logging.getLogger("voice.transport.ws")


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
    dropped."""
    ws = web.WebSocketResponse(
        max_msg_size=max_frame_bytes, protocols=("realtime",), heartbeat=heartbeat
    )
    await ws.prepare(request)
    conn = open_connection()
    session = conn.session
    log.info("session %s: WebSocket client %s connected", session.id, request.remote)

    async def send(events: list[dict[str, Any]]) -> None:
        for event in events:
            async with asyncio.timeout(send_timeout):
                await ws.send_str(json.dumps(event, separators=(",", ":")))

    async def pump() -> None:
        while True:
            events = await conn.next_events()
            await send(events)
            if conn.closed:
                code = WSCloseCode.INTERNAL_ERROR if session.failed else WSCloseCode.OK
                await ws.close(code=code, message=(session.closed_reason or "").encode()[:120])
                return

    runner = asyncio.create_task(session.run(), name=f"session-{session.id}")
    await send(conn.hello())
    writer = asyncio.create_task(pump(), name=f"writer-{session.id}")
    try:
        await _read(ws, conn, send, writer)
    finally:
        session.close(_close_reason(ws))
        await cancel_and_wait((writer, runner))
        await ws.close()
        log.info(
            "session %s ended (%s); %s",
            session.id,
            session.closed_reason,
            session.transcript_summary(),
        )
    return ws


async def _read(
    ws: web.WebSocketResponse,
    conn: RealtimeConnection,
    send: Callable[[list[dict[str, Any]]], Any],
    writer: asyncio.Task[None],
) -> None:
    while not writer.done():
        reader = asyncio.ensure_future(ws.receive())
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader not in done:
            reader.cancel()
            return
        msg = reader.result()
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
            log.info("session %s: WebSocket error: %s", conn.session.id, ws.exception())
            return
        else:  # CLOSE, CLOSING, CLOSED
            return


def _close_reason(ws: web.WebSocketResponse) -> str:
    if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
        return "frame too large"
    if isinstance(ws.exception(), TimeoutError):  # aiohttp's heartbeat: no pong in time
        return f"client did not answer a ping: {ws.exception()}"
    if ws.close_code not in (None, WSCloseCode.OK, WSCloseCode.GOING_AWAY):
        return f"client disconnected (close code {ws.close_code})"
    return "client disconnected"
