"""Twilio Media Streams messages (bidirectional ``<Connect><Stream>``), sans-I/O.

:func:`parse` turns one text frame from Twilio into a small typed message (``connected``,
``start``, ``media``, ``dtmf``, ``mark``, ``stop``) or raises a
:class:`~pipeline.errors.ProtocolError` whose ``code`` says what was wrong:

``invalid_json``          not UTF-8, not JSON, not a JSON object, or a string with a lone surrogate
``unknown_event``         an ``event`` this module does not know
``missing_field``         a required field is absent (``streamSid``, ``media.payload`` …)
``invalid_field``         a field of the wrong type or value (a sequence number that is no integer,
                          a DTMF digit outside ``0-9 * # A-D`` …)
``invalid_audio``         a media payload that is not strict base64
``unsupported_media_format``  a ``start`` whose ``mediaFormat`` is not μ-law, 8 kHz, mono (the only
                          format of bidirectional streams)

:func:`media`, :func:`mark` and :func:`clear` build the messages the server sends back. Twilio sends
numbers such as ``sequenceNumber``, ``chunk`` and ``timestamp`` as strings; they are parsed to
``int`` here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import ProtocolError

from .realtime.validate import LONE_SURROGATE, lone_surrogate

ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
CHANNELS = 1
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str | None
    account_sid: str | None
    media_format: MediaFormat
    tracks: tuple[str, ...] = ()
    custom_parameters: dict[str, str] = field(default_factory=dict)
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    payload: bytes
    """μ-law bytes, decoded from base64."""
    track: str | None = None
    chunk: int | None = None
    timestamp: int | None = None
    """Milliseconds since the stream started."""
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str
    track: str | None = None
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio's echo of a mark the server sent: the audio before it has been played."""

    stream_sid: str
    name: str
    sequence_number: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str | None = None
    account_sid: str | None = None
    sequence_number: int | None = None


TwilioMessage = Connected | Start | Media | Dtmf | Mark | Stop


# ------------------------------------------------------------------ Twilio → server


def parse(data: str | bytes) -> TwilioMessage:
    """One Twilio text frame as a typed message; :class:`ProtocolError` if it is malformed."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not UTF-8 text", code="invalid_json") from None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object", code="invalid_json")
    if lone_surrogate(obj):
        raise ProtocolError(LONE_SURROGATE, code="invalid_json")
    event = obj.get("event")
    if event is None:
        raise ProtocolError("message has no 'event'", code="missing_field", param="event")
    if not isinstance(event, str):
        raise ProtocolError("'event' must be a string", code="invalid_field", param="event")
    parser = _PARSERS.get(event)
    if parser is None:
        raise ProtocolError(f"unknown event {event[:64]!r}", code="unknown_event", param="event")
    return parser(obj)


def _connected(obj: dict[str, Any]) -> Connected:
    return Connected(_opt_str(obj, "protocol"), _opt_str(obj, "version"))


def _start(obj: dict[str, Any]) -> Start:
    body = _object(obj, "start")
    top, inner = _opt_str(obj, "streamSid"), _opt_str(body, "streamSid", "start.")
    if top and inner and top != inner:
        raise ProtocolError(
            f"streamSid {top!r} and start.streamSid {inner!r} differ",
            code="invalid_field",
            param="streamSid",
        )
    stream_sid = top or inner
    if not stream_sid:
        raise ProtocolError("start has no streamSid", code="missing_field", param="streamSid")
    fmt = _object(body, "mediaFormat", "start.")
    encoding = fmt.get("encoding")
    rate = _opt_int(fmt, "sampleRate", "start.mediaFormat.")
    channels = _opt_int(fmt, "channels", "start.mediaFormat.")
    if encoding != ENCODING or rate != SAMPLE_RATE or channels not in (None, CHANNELS):
        raise ProtocolError(
            f"unsupported media format {encoding!r} at {rate} Hz, {channels} channel(s):"
            f" only {ENCODING} at {SAMPLE_RATE} Hz mono is supported",
            code="unsupported_media_format",
            param="start.mediaFormat",
        )
    tracks = body.get("tracks", [])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ProtocolError(
            "start.tracks must be a list of strings", code="invalid_field", param="start.tracks"
        )
    params = body.get("customParameters") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    ):
        raise ProtocolError(
            "start.customParameters must map strings to strings",
            code="invalid_field",
            param="start.customParameters",
        )
    return Start(
        stream_sid=stream_sid,
        call_sid=_opt_str(body, "callSid", "start."),
        account_sid=_opt_str(body, "accountSid", "start."),
        media_format=MediaFormat(encoding, rate, channels or CHANNELS),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        sequence_number=_sequence(obj),
    )


def _media(obj: dict[str, Any]) -> Media:
    body = _object(obj, "media")
    payload = body.get("payload")
    if payload is None:
        raise ProtocolError("media has no payload", code="missing_field", param="media.payload")
    if not isinstance(payload, str):
        raise ProtocolError(
            "media.payload must be a base64 string", code="invalid_audio", param="media.payload"
        )
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "media.payload is not valid base64", code="invalid_audio", param="media.payload"
        ) from None
    return Media(
        stream_sid=_stream_sid(obj),
        payload=audio,
        track=_opt_str(body, "track", "media."),
        chunk=_opt_int(body, "chunk", "media."),
        timestamp=_opt_int(body, "timestamp", "media."),
        sequence_number=_sequence(obj),
    )


def _dtmf(obj: dict[str, Any]) -> Dtmf:
    body = _object(obj, "dtmf")
    digit = body.get("digit")
    if digit is None:
        raise ProtocolError("dtmf has no digit", code="missing_field", param="dtmf.digit")
    if not isinstance(digit, str) or digit not in DTMF_DIGITS:
        raise ProtocolError(
            f"dtmf.digit must be one of 0-9 * # A-D, not {str(digit)[:16]!r}",
            code="invalid_field",
            param="dtmf.digit",
        )
    return Dtmf(_stream_sid(obj), digit, _opt_str(body, "track", "dtmf."), _sequence(obj))


def _mark(obj: dict[str, Any]) -> Mark:
    body = _object(obj, "mark")
    name = body.get("name")
    if name is None:
        raise ProtocolError("mark has no name", code="missing_field", param="mark.name")
    if not isinstance(name, str):
        raise ProtocolError("mark.name must be a string", code="invalid_field", param="mark.name")
    return Mark(_stream_sid(obj), name, _sequence(obj))


def _stop(obj: dict[str, Any]) -> Stop:
    body = obj.get("stop") or {}
    if not isinstance(body, dict):
        raise ProtocolError("'stop' must be an object", code="invalid_field", param="stop")
    return Stop(
        _stream_sid(obj),
        _opt_str(body, "callSid", "stop."),
        _opt_str(body, "accountSid", "stop."),
        _sequence(obj),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], TwilioMessage]] = {
    "connected": _connected,
    "start": _start,
    "media": _media,
    "dtmf": _dtmf,
    "mark": _mark,
    "stop": _stop,
}


def _object(obj: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        raise ProtocolError(f"'{prefix}{key}' is missing", code="missing_field", param=prefix + key)
    if not isinstance(value, dict):
        raise ProtocolError(
            f"'{prefix}{key}' must be an object", code="invalid_field", param=prefix + key
        )
    return value


def _stream_sid(obj: dict[str, Any]) -> str:
    sid = _opt_str(obj, "streamSid")
    if not sid:
        raise ProtocolError(
            f"{obj['event']} has no streamSid", code="missing_field", param="streamSid"
        )
    return sid


def _opt_str(obj: dict[str, Any], key: str, prefix: str = "") -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(
        f"'{prefix}{key}' must be a string", code="invalid_field", param=prefix + key
    )


def _opt_int(obj: dict[str, Any], key: str, prefix: str = "") -> int | None:
    """An integer sent as a number or a decimal string (Twilio sends strings)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    raise ProtocolError(
        f"'{prefix}{key}' must be a non-negative integer, not {str(value)[:32]!r}",
        code="invalid_field",
        param=prefix + key,
    )


def _sequence(obj: dict[str, Any]) -> int | None:
    return _opt_int(obj, "sequenceNumber")


# ------------------------------------------------------------------ server → Twilio


def media(stream_sid: str, ulaw: bytes) -> str:
    """Audio for Twilio to play: μ-law 8 kHz bytes (160 per 20 ms)."""
    payload = base64.b64encode(ulaw).decode("ascii")
    return _dump({"event": "media", "streamSid": _sid(stream_sid), "media": {"payload": payload}})


def mark(stream_sid: str, name: str) -> str:
    """Asks Twilio to echo ``name`` once the audio sent before it has been played."""
    if not isinstance(name, str) or not name:
        raise ValueError("a mark needs a non-empty name")
    return _dump({"event": "mark", "streamSid": _sid(stream_sid), "mark": {"name": name}})


def clear(stream_sid: str) -> str:
    """Asks Twilio to drop the audio it has buffered (and echo the pending marks)."""
    return _dump({"event": "clear", "streamSid": _sid(stream_sid)})


def _sid(stream_sid: str) -> str:
    if not isinstance(stream_sid, str) or not stream_sid:
        raise ValueError("a streamSid is required")
    return stream_sid


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))
