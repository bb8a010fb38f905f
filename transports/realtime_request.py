"""What a Realtime client's HTTP request asks for, read at the boundary (aiohttp).

``x_voice_events`` — the query parameter of ``GET /v1/realtime`` and ``POST /v1/realtime/calls``
that turns the ``x.voice.*`` extension events on (``1``) or leaves them off (``0``, absent).

``read_offer`` — the body of ``POST /v1/realtime/calls``: the SDP offer alone
(``Content-Type: application/sdp``), or the multipart form that the openai SDK's
``client.realtime.calls.create(sdp=..., session=...)`` sends, with a part ``sdp`` and a part
``session`` (a JSON session object, applied as a ``session.update`` would be).
Every problem is an HTTP error naming it: 415 (content type), 413 (size), 400 (the rest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from .realtime.validate import LONE_SURROGATE, lone_surrogate
from .sdp import MAX_SDP_BYTES

EXTENSIONS_PARAM = "x_voice_events"
_FORM_OVERHEAD = 16 << 10
"""Bytes a multipart form may add to its parts (boundaries, part headers)."""


@dataclass(slots=True)
class Offer:
    sdp: str
    session: dict[str, Any] | None = None
    """The session configuration sent with the offer, if any."""


def wants_extensions(request: web.Request) -> bool:
    """Whether the client asked for the ``x.voice.*`` events; any value but 0 or 1 is a 400."""
    value = request.query.get(EXTENSIONS_PARAM, "0")
    if value not in ("0", "1"):
        raise web.HTTPBadRequest(text=f"{EXTENSIONS_PARAM} must be 0 or 1, got {value[:20]!r}")
    return value == "1"


async def read_offer(request: web.Request, *, max_session_bytes: int) -> Offer:
    """The offer (and session) of a ``POST /v1/realtime/calls``. Cancel-safe."""
    if request.content_type == "application/sdp":
        _check_length(request, MAX_SDP_BYTES)
        try:
            return Offer(await request.text())
        except (UnicodeDecodeError, ValueError):
            raise web.HTTPBadRequest(text="the SDP offer is not valid text") from None
    if request.content_type == "multipart/form-data":
        _check_length(request, MAX_SDP_BYTES + max_session_bytes + _FORM_OVERHEAD)
        return await _read_form(request, max_session_bytes)
    raise web.HTTPUnsupportedMediaType(
        text="expected Content-Type application/sdp or multipart/form-data (parts sdp and"
        f" session), got {request.content_type or 'none'}"
    )


def _check_length(request: web.Request, limit: int) -> None:
    if (request.content_length or 0) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length or 0)


async def _read_form(request: web.Request, max_session_bytes: int) -> Offer:
    limits = {"sdp": MAX_SDP_BYTES, "session": max_session_bytes}
    parts: dict[str, bytes] = {}
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise web.HTTPBadRequest(text="nested multipart forms are not supported")
            name = part.name or ""
            if name not in limits:
                raise web.HTTPBadRequest(
                    text=f"unknown form part {name[:40]!r}: the parts are sdp and session"
                )
            if name in parts:
                raise web.HTTPBadRequest(text=f"form part {name!r} is sent twice")
            parts[name] = await _read_part(part, name, limits[name])
    except ValueError as exc:  # a malformed form (aiohttp's parser)
        raise web.HTTPBadRequest(text=f"malformed multipart form: {exc}") from None
    if "sdp" not in parts:
        raise web.HTTPBadRequest(text="missing form part 'sdp' (the SDP offer)")
    try:
        sdp = parts["sdp"].decode()
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the SDP offer is not valid text") from None
    return Offer(sdp, _session(parts["session"]) if "session" in parts else None)


async def _read_part(part: BodyPartReader, name: str, limit: int) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk():
        data += chunk
        if len(data) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(data))
    return bytes(data)


def _session(data: bytes) -> dict[str, Any]:
    try:
        session = json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise web.HTTPBadRequest(text=f"form part 'session' is not valid JSON: {exc}") from None
    if not isinstance(session, dict):
        raise web.HTTPBadRequest(text="form part 'session' must be a JSON object")
    if lone_surrogate(session):
        raise web.HTTPBadRequest(text=f"form part 'session': {LONE_SURROGATE}")
    return session
