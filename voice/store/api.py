"""``GET /v1/sessions`` and ``GET /v1/sessions/{session_id}``: the stored sessions.

Ordinary routes under ``/v1/``, behind the server's API keys like every other. The list is
newest first, ``limit`` (1-100, default 20) at a time; the next page is ``?before=<last_id>``.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .sql import StoreError, UnknownCursor
from .writer import SessionStore

MAX_PAGE = 100


def add_routes(app: web.Application, store: SessionStore) -> None:
    api = SessionsApi(store)
    app.router.add_get("/v1/sessions", api.list)
    app.router.add_get("/v1/sessions/{session_id}", api.get)


class SessionsApi:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def list(self, request: web.Request) -> web.Response:
        limit = _limit(request.query.get("limit", "20"))
        before = request.query.get("before") or None
        try:
            rows = await asyncio.to_thread(self.store.list_sessions, limit + 1, before)
        except UnknownCursor as exc:
            raise web.HTTPBadRequest(text=f"before: {exc}") from None
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        page = rows[:limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "has_more": len(rows) > limit,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def get(self, request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        try:
            record = await asyncio.to_thread(self.store.get_session, session_id)
        except StoreError as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        if record is None:
            raise web.HTTPNotFound(text=f"no session {session_id}")
        return web.json_response(record)


def _limit(text: str) -> int:
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise web.HTTPBadRequest(text=f"limit: a whole number from 1 to {MAX_PAGE}, not {text!r}")
    return limit
