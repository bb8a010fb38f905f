"""The callers: an OpenAI Realtime client (over a plain ``websockets`` connection, or through the
official ``openai`` SDK) and a fake Twilio (Media Streams), each with a microphone that streams
20 ms chunks in real time — speech when there is some queued, silence otherwise.

The Realtime callers ask for the server's extension events (``x.voice.turn.metrics``, the stage
breakdown) with the query parameter ``x_voice_events=1``; the server sends them to no one else.

What the server sends is reduced to :class:`~benchmarks.harness.timeline.Ev` records stamped at
arrival; the microphone stamps when it sent the first and last audible chunk of each utterance.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from transports import g711

from .audio import CHUNK_MS, chunk_samples, chunked, first_loud, is_loud, last_loud
from .echo import EchoPath, Speakerphone
from .timeline import (
    AUDIO,
    CLEAR,
    CREATED,
    DONE,
    ERROR,
    MARK,
    METRICS,
    REALTIME,
    REPLY_TEXT,
    TRANSCRIPT,
    TWILIO,
    Ev,
    Spoken,
)

T = TypeVar("T")
CONNECT_TIMEOUT_S = 30.0
REALTIME_RATE = 24_000
TWILIO_RATE = 8_000
WEBRTC_RATE = 48_000  # Opus
EXTENSION_EVENTS = {"x_voice_events": "1"}
"""The query that asks the server for its ``x.voice.*`` events."""
SDK_MODEL = "voice-local"


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to its query (a parameter it already has is kept)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query = {**params, **query}
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(slots=True)
class Utterance:
    """The microphone's marks for one thing said: resolved when those chunks are sent."""

    onset: asyncio.Future[float]
    end: asyncio.Future[float]

    def resolved(self) -> Spoken:
        onset = self.onset.result() if self.onset.done() else None
        end = self.end.result() if self.end.done() else None
        return Spoken(onset, end)


def lay_out(
    pieces: Sequence[np.ndarray], pauses_ms: Sequence[int], rate: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Speech segments with the scripted silence between them, as one signal, and where each
    segment's first and last audible sample lie in it (a segment with nothing audible: its whole
    extent)."""
    audio: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    offset = 0
    for i, piece in enumerate(pieces):
        first, last = first_loud(piece), last_loud(piece)
        if first is None or last is None:  # nothing audible: mark its whole extent
            first, last = 0, max(len(piece) - 1, 0)
        spans.append((offset + first, offset + last))
        audio.append(piece.astype(np.int16, copy=False))
        offset += len(piece)
        if i < len(pieces) - 1:
            gap = rate * (pauses_ms[i] if i < len(pauses_ms) else 0) // 1000
            audio.append(np.zeros(gap, dtype=np.int16))
            offset += gap
    return (np.concatenate(audio) if audio else np.zeros(0, np.int16)), spans


class Microphone:
    """Sends one chunk every 20 ms of wall-clock time (chunk n leaves at start + n * 20 ms, so a
    stalled event loop catches up in a burst, like an OS audio buffer): queued speech first,
    silence whenever nothing is queued."""

    def __init__(self, send: Callable[[np.ndarray], Awaitable[None]], rate: int) -> None:
        self._send = send
        self.size = chunk_samples(rate)
        self.rate = rate
        self._queue: deque[tuple[np.ndarray, list[asyncio.Future[float]]]] = deque()
        self._silence = np.zeros(self.size, dtype=np.int16)
        self.chunks_sent = 0

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def say(self, pieces: Sequence[np.ndarray], pauses_ms: Sequence[int] = ()) -> list[Utterance]:
        """Queue speech segments with the scripted silence between them; one :class:`Utterance`
        per segment (its first and last audible chunk)."""
        loop = asyncio.get_running_loop()
        audio, spans = lay_out(pieces, pauses_ms, self.rate)
        chunks = chunked(audio, self.size)
        markers: list[list[asyncio.Future[float]]] = [[] for _ in chunks]
        out = []
        for start, end in spans:
            utterance = Utterance(loop.create_future(), loop.create_future())
            markers[start // self.size].append(utterance.onset)
            markers[end // self.size].append(utterance.end)
            out.append(utterance)
        self._queue.extend(zip(chunks, markers, strict=True))
        return out

    async def run(self) -> None:
        start = time.perf_counter()
        while True:
            self.chunks_sent += 1
            delay = start + self.chunks_sent * CHUNK_MS / 1000 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk, marks = self._queue.popleft() if self._queue else (self._silence, [])
            await self._send(chunk)
            sent = time.perf_counter()
            for mark in marks:
                if not mark.done():
                    mark.set_result(sent)


class Call:
    """One connection to the server under test; use as ``async with``."""

    protocol = ""
    rate = 0
    phone_line = False
    """A phone's caller (Twilio, SIP): :func:`with_echo` may put it on a speakerphone."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phone: Speakerphone | None = None
        """A speakerphone (:func:`with_echo`; phone callers only): the agent's audio comes back
        into the microphone."""
        self.events: list[Ev] = []
        self.closed: str | None = None
        self.mic = Microphone(self._send_audio, self.rate)
        self._new = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._ws: ClientConnection | None = None

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Call:
        await self._connect()
        try:
            await self._opened()
        except BaseException:
            await self._disconnect()
            raise
        self._tasks = [
            asyncio.create_task(self._read(), name=f"{self.protocol}-reader"),
            asyncio.create_task(self.mic.run(), name=f"{self.protocol}-microphone"),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        mic = self._tasks[1] if len(self._tasks) > 1 else None
        if mic is not None:
            mic.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await mic
        with contextlib.suppress(Exception):
            await self._hang_up()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._disconnect(), 5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _headers(self) -> dict[str, str]:
        return {}

    async def _opened(self) -> None:
        """After the handshake: say hello / wait for the server's greeting."""

    async def _hang_up(self) -> None:
        pass

    async def cancel_reply(self) -> None:
        """Ask the server to stop a reply (Realtime only; a phone caller cannot)."""

    def vanish(self) -> None:
        """Drop the connection at once, without a close frame (a caller whose network died);
        the microphone stops too. Leave the ``async with`` afterwards as usual."""
        if self._tasks:
            self._tasks[1].cancel()
        if self._ws is not None:
            self._ws.transport.abort()

    # ------------------------------------------------------------ wire (a plain ``websockets``
    # connection; another client library overrides these four)

    async def _connect(self) -> None:
        self._ws = await websockets.connect(
            self.url,
            max_size=None,
            open_timeout=CONNECT_TIMEOUT_S,
            ping_interval=None,
            additional_headers=self._headers(),
        )

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps(message, separators=(",", ":")))

    async def _receive(self) -> str | bytes:
        """The next message; raises ``websockets.ConnectionClosed`` once there is none."""
        assert self._ws is not None
        return await self._ws.recv()

    async def _disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def send_json(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._send(message)

    async def _send_audio(self, chunk: np.ndarray) -> None:
        raise NotImplementedError

    async def _read(self) -> None:
        try:
            while True:
                raw = await self._receive()
                now = time.perf_counter()
                try:
                    message = json.loads(raw)
                except ValueError:
                    self.add(Ev(now, ERROR, text="a message that is not JSON"))
                    continue
                if isinstance(message, dict):
                    self.handle(message, now)
        except websockets.ConnectionClosedOK:
            self.closed = "closed by the server"
        except websockets.ConnectionClosed as exc:
            self.closed = f"connection closed: {exc}"
        except ConnectionError as exc:  # (a data channel: see webrtc_client.py)
            self.closed = str(exc)
        finally:
            self._new.set()

    def add(self, ev: Ev) -> None:
        self.events.append(ev)
        self._new.set()

    def handle(self, message: dict[str, Any], now: float) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ waiting

    async def until(
        self,
        check: Callable[[Ev | None], T | None],
        start: int,
        deadline: float,
        poll_s: float = 0.05,
    ) -> T | None:
        """Feed ``check`` every event from index ``start`` on as it arrives, and ``None`` at least
        every ``poll_s`` (for conditions on time); return its first non-None answer, or None at
        ``deadline`` or once the connection is closed and every event was seen."""
        index = start
        while True:
            while index < len(self.events):
                found = check(self.events[index])
                index += 1
                if found is not None:
                    return found
            found = check(None)
            if found is not None:
                return found
            left = deadline - time.perf_counter()
            if left <= 0 or self.closed is not None:
                return None
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(left, poll_s))


class RealtimeCall(Call):
    """An OpenAI Realtime client: PCM16 at 24 kHz, ``server_vad`` (the server's defaults); it
    connects to ``url`` with ``x_voice_events=1`` added."""

    protocol = REALTIME
    rate = REALTIME_RATE

    def __init__(self, url: str) -> None:
        super().__init__(with_query(url, EXTENSION_EVENTS))
        self.session: dict[str, Any] = {}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer voice-bench"}

    async def _opened(self) -> None:
        raw = await asyncio.wait_for(self._receive(), CONNECT_TIMEOUT_S)
        event = json.loads(raw)
        if event.get("type") != "session.created":
            raise ConnectionError(f"expected session.created, got {event.get('type')!r}")
        self.session = event.get("session") or {}

    async def _send_audio(self, chunk: np.ndarray) -> None:
        audio = base64.b64encode(chunk.astype("<i2").tobytes()).decode()
        await self.send_json({"type": "input_audio_buffer.append", "audio": audio})

    async def cancel_reply(self) -> None:
        await self.send_json({"type": "response.cancel"})

    def handle(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind in ("response.output_audio.delta", "response.audio.delta"):
            samples = np.frombuffer(base64.b64decode(message.get("delta") or ""), dtype="<i2")
            self.add(
                Ev(
                    now,
                    AUDIO,
                    message.get("response_id"),
                    is_loud(samples),
                    seconds=len(samples) / self.rate,
                )
            )
        elif kind == "response.created":
            self.add(Ev(now, CREATED, _response_id(message)))
        elif kind == "response.done":
            response = message.get("response") or {}
            details = response.get("status_details") or {}
            self.add(
                Ev(
                    now,
                    DONE,
                    response.get("id"),
                    status=response.get("status"),
                    reason=details.get("reason") if isinstance(details, dict) else None,
                )
            )
        elif kind == "x.voice.turn.metrics":
            self.add(Ev(now, METRICS, _response_id(message), metrics=_metrics(message)))
        elif kind == "conversation.item.input_audio_transcription.completed":
            self.add(Ev(now, TRANSCRIPT, text=str(message.get("transcript") or "")))
        elif kind in ("response.output_audio_transcript.done", "response.audio_transcript.done"):
            text = str(message.get("transcript") or "")
            self.add(Ev(now, REPLY_TEXT, message.get("response_id"), text=text))
        elif kind == "error":
            error = message.get("error") or {}
            self.add(Ev(now, ERROR, text=f"{error.get('code')}: {error.get('message')}"))


class SdkRealtimeCall(RealtimeCall):
    """The same Realtime client, through the official ``openai`` SDK
    (``client.realtime.connect``), as an application would be written."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._conn: Any = None  # openai's AsyncRealtimeConnection

    async def _connect(self) -> None:
        from openai import AsyncOpenAI, OpenAIError

        base_url, query = sdk_endpoint(self.url)
        client = AsyncOpenAI(base_url=base_url, api_key="voice-bench")
        manager = client.realtime.connect(model=SDK_MODEL, extra_query=query, max_retries=0)
        try:
            self._conn = await asyncio.wait_for(manager.enter(), CONNECT_TIMEOUT_S)
        except OpenAIError as exc:  # into the tree the runner already handles
            raise ConnectionError(f"openai: {exc}") from exc

    async def _send(self, message: dict[str, Any]) -> None:
        await self._conn.send(message)

    async def _receive(self) -> bytes:
        return bytes(await self._conn.recv_bytes())

    async def _disconnect(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def sdk_endpoint(ws_url: str) -> tuple[str, dict[str, str]]:
    """``ws://host:port/v1/realtime?q`` → (``http://host:port/v1``, the query): what the SDK takes
    (it appends ``/realtime`` and ``model`` itself)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/").removesuffix("/realtime") or "/v1"
    return urlunsplit((scheme, parts.netloc, path, "", "")), dict(parse_qsl(parts.query))


def _response_id(message: dict[str, Any]) -> str | None:
    response = message.get("response")
    if isinstance(response, dict):
        return response.get("id")
    return message.get("response_id")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):  # a breakdown: its total, else the sum of its parts
        if "total" in value:
            return _number(value["total"])
        parts = [_number(v) for v in value.values()]
        known = [p for p in parts if p is not None]
        return sum(known) if known else None
    return None


def _metrics(message: dict[str, Any]) -> dict[str, float]:
    """``metrics_ms`` (numbers only), plus ``overhead_ms`` wherever the event carries it."""
    out: dict[str, float] = {}
    for key, value in (message.get("metrics_ms") or {}).items():
        number = _number(value)
        if number is not None:
            out[str(key)] = number
    if "overhead_ms" in message and (overhead := _number(message["overhead_ms"])) is not None:
        out["overhead_ms"] = overhead
    return out


class TwilioCall(Call):
    """Plays Twilio's side of a Media Stream: ``connected``, ``start`` (μ-law 8 kHz mono), then
    ``media`` every 20 ms; it plays the agent's ``media`` in real time (a simulated playout
    buffer), echoes each ``mark`` once the audio before it has played, and on ``clear`` drops
    the buffer and echoes the marks still pending — what Twilio does."""

    protocol = TWILIO
    rate = TWILIO_RATE
    phone_line = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)
        self._sequence = 0
        self._media_chunks = 0
        self._played_until = 0.0
        self._marks: list[tuple[str, asyncio.TimerHandle]] = []

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def _opened(self) -> None:
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_json(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": {},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )

    async def _send_audio(self, chunk: np.ndarray) -> None:
        if self.phone is not None:
            chunk = self.phone.mix(chunk, time.perf_counter())
        self._media_chunks += 1
        await self.send_json(
            {
                "event": "media",
                "sequenceNumber": self._next_sequence(),
                "media": {
                    "track": "inbound",
                    "chunk": str(self._media_chunks),
                    "timestamp": str((self._media_chunks - 1) * CHUNK_MS),
                    "payload": base64.b64encode(g711.ulaw_encode(chunk)).decode(),
                },
                "streamSid": self.stream_sid,
            }
        )

    async def _hang_up(self) -> None:
        pending, self._marks = self._marks, []
        for _, handle in pending:
            handle.cancel()
        await self.send_json(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )

    def handle(self, message: dict[str, Any], now: float) -> None:
        kind = message.get("event")
        if kind == "media":
            payload = (message.get("media") or {}).get("payload") or ""
            samples = g711.ulaw_decode(base64.b64decode(payload))
            self.add(Ev(now, AUDIO, loud=is_loud(samples)))
            if self.phone is not None:
                self.phone.play(samples, now)
            self._played_until = max(now, self._played_until) + len(samples) / self.rate
        elif kind == "mark":
            name = str((message.get("mark") or {}).get("name") or "")
            if not name.startswith("~"):  # a progress mark ("~item~ms") is only echoed
                self.add(Ev(now, MARK, text=name))
            loop = asyncio.get_running_loop()
            delay = max(0.0, self._played_until - now)
            handle = loop.call_later(delay, self._echo_mark, name)
            self._marks.append((name, handle))
        elif kind == "clear":
            self.add(Ev(now, CLEAR))
            self._played_until = now
            if self.phone is not None:
                self.phone.clear(now)
            pending, self._marks = self._marks, []
            for name, handle in pending:
                handle.cancel()
                self._echo_mark(name, pop=False)

    def _echo_mark(self, name: str, pop: bool = True) -> None:
        if pop:
            self._marks = [(n, h) for n, h in self._marks if n != name]
        message = {
            "event": "mark",
            "sequenceNumber": self._next_sequence(),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        }
        task = asyncio.get_running_loop().create_task(self._send_quietly(message))
        self._tasks.append(task)

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await self.send_json(message)


CallOpener = Callable[[str, str], Call]
"""(protocol, url) → a caller, not yet connected."""


def open_call(protocol: str, url: str) -> Call:
    if protocol == REALTIME:
        return RealtimeCall(url)
    if protocol == TWILIO:
        return TwilioCall(url)
    raise ValueError(f"unknown protocol {protocol!r}")


def with_echo(opener: CallOpener, path: EchoPath) -> CallOpener:
    """``opener``'s callers, each phone one (Twilio, SIP) on a speakerphone with this echo
    path (the caller keeps it as ``phone``)."""

    def open_(protocol: str, url: str) -> Call:
        call = opener(protocol, url)
        if call.phone_line:
            call.phone = Speakerphone(path, call.rate, time.perf_counter())
        return call

    return open_


def open_sdk_call(protocol: str, url: str) -> Call:
    """Realtime through the ``openai`` SDK (Twilio as :func:`open_call`)."""
    return SdkRealtimeCall(url) if protocol == REALTIME else open_call(protocol, url)
