"""A Gemini Live test server on loopback, written from the published message formats of
``BidiGenerateContent`` (the Live API's WebSocket): ``setup`` → ``setupComplete``;
``realtimeInput`` audio (16 kHz PCM, ``audio`` or the older ``mediaChunks``), with its own
activity detection (loud = speech, 400 ms of quiet ends the turn) or the client's
``activityStart``/``activityEnd``; ``clientContent``; ``toolResponse``. It answers a turn with
``inputTranscription`` (the words it was told the caller says), then ``modelTurn`` audio at
24 kHz with ``outputTranscription``, then ``turnComplete`` and a ``sessionResumptionUpdate``;
speech over its answer gets ``interrupted``. A reply may instead be a ``toolCall``.

It reads both spellings of field names (camelCase and snake_case) and writes camelCase, or
snake_case with ``snake=True``. TLS with a self-signed certificate (:func:`self_signed`) lets
the official ``google-genai`` SDK connect to it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import json
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from pipeline.handoff.gemini_live import PATH, camel

from .fakes import tone

IN_RATE, OUT_RATE = 16_000, 24_000
CHUNK_S = 0.1
"""Audio is answered in pieces of this much."""
PACE = 0.5
"""Seconds of wall time per second of answer audio sent (faster than real time, like the API)."""
QUIET_S = 0.4


@dataclass
class Call:
    """A reply that is a function call."""

    name: str
    args: dict[str, Any]


@dataclass
class Script:
    heard: list[str] = field(default_factory=lambda: ["hello"])
    """What the caller says in each turn (the input transcription)."""
    replies: list[str | Call] = field(default_factory=lambda: ["Hi there."])
    """The model's turns, in order; the last repeats."""
    ms_per_word: int = 200


def snake(value: Any) -> Any:
    if isinstance(value, list):
        return [snake(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {
        re.sub(r"([A-Z])", lambda mt: "_" + mt.group(1).lower(), k): v
        if k in ("args", "response")
        else snake(v)
        for k, v in value.items()
    }


class GeminiLiveServer:
    def __init__(
        self,
        script: Script | None = None,
        *,
        snake: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script = script or Script()
        self.snake, self.tls = snake, tls
        self.received: list[dict[str, Any]] = []
        """Every client message, camelCased, audio data left out."""
        self.raw: list[str] = []
        self.setups: list[dict[str, Any]] = []
        self.keys: list[str] = []
        self.turn = 0
        self.reply = 0
        """The script's place (kept across connections: a resumed session goes on)."""
        self.resumed = asyncio.Event()
        """Set when a client sets up with a resumption handle."""
        self.drop_after: int | None = None
        """Close the connection once this many replies have ended (a session to resume)."""
        """The API key of each connection (``x-goog-api-key``)."""
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}{PATH}"

    async def __aenter__(self) -> GeminiLiveServer:
        app = web.Application()
        for version in ("v1beta", "v1alpha", "v1"):  # (the SDK's default has moved: all three)
            app.router.add_get(PATH.replace("v1beta", version), self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.WebSocketResponse:
        self.keys.append(request.headers.get("x-goog-api-key", ""))
        ws = web.WebSocketResponse(max_msg_size=16 << 20)
        await ws.prepare(request)
        await _Conversation(self, ws).run()
        return ws


class _Conversation:
    def __init__(self, server: GeminiLiveServer, ws: web.WebSocketResponse) -> None:
        self.server, self.ws = server, ws
        self.manual = False
        self.speech_s = 0.0
        self.quiet_s = 0.0
        self.answering: asyncio.Task[None] | None = None

    async def run(self) -> None:
        try:
            async for message in self.ws:
                self.server.raw.append(message.data)
                await self._on(camel(json.loads(message.data)))
        finally:
            if self.answering is not None:
                self.answering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.answering

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(snake(message) if self.server.snake else message))

    async def _on(self, message: dict[str, Any]) -> None:
        kept = json.loads(json.dumps(message))
        for chunk in kept.get("realtimeInput", {}).get("mediaChunks", []):
            chunk.pop("data", None)
        kept.get("realtimeInput", {}).get("audio", {}).pop("data", None)
        self.server.received.append(kept)
        if "setup" in message:
            setup = message["setup"]
            self.server.setups.append(setup)
            if setup.get("sessionResumption", {}).get("handle"):
                self.server.resumed.set()
            detection = setup.get("realtimeInputConfig", {}).get("automaticActivityDetection", {})
            self.manual = bool(detection.get("disabled"))
            await self.send({"setupComplete": {}})
        elif "realtimeInput" in message:
            await self._input(message["realtimeInput"])
        elif "clientContent" in message:
            if message["clientContent"].get("turnComplete"):
                self._answer(heard=None)
        elif "toolResponse" in message:
            self._answer(heard=None)

    async def _input(self, body: dict[str, Any]) -> None:
        if "activityEnd" in body:
            self._answer(heard=self._heard())
            return
        blobs = [body["audio"]] if "audio" in body else body.get("mediaChunks", [])
        for blob in blobs:
            assert blob.get("mimeType", "").startswith("audio/pcm"), blob
            audio = np.frombuffer(base64.b64decode(blob["data"]), dtype="<i2")
            for start in range(0, len(audio), IN_RATE // 50):
                await self._window(audio[start : start + IN_RATE // 50])

    async def _window(self, window: np.ndarray) -> None:
        seconds = len(window) / IN_RATE
        loud = len(window) > 0 and float(np.abs(window).mean()) > 1000
        if loud:
            self.speech_s += seconds
            self.quiet_s = 0.0
            if self.answering is not None and not self.answering.done() and self.speech_s >= 0.2:
                self.answering.cancel()
                self.answering = None
                await self.send({"serverContent": {"interrupted": True}})
            return
        self.quiet_s += seconds
        if not self.manual and self.speech_s >= 0.2 and self.quiet_s >= QUIET_S:
            self.speech_s = 0.0
            self._answer(heard=self._heard())

    def _heard(self) -> str:
        heard = self.server.script.heard
        text = heard[min(self.server.turn, len(heard) - 1)]
        self.server.turn += 1
        return text

    def _answer(self, heard: str | None) -> None:
        replies = self.server.script.replies
        reply = replies[min(self.server.reply, len(replies) - 1)]
        self.server.reply += 1
        self.answering = asyncio.get_running_loop().create_task(self._say(heard, reply))

    async def _say(self, heard: str | None, reply: str | Call) -> None:
        if heard is not None:
            await self.send({"serverContent": {"inputTranscription": {"text": heard}}})
        if isinstance(reply, Call):
            call = {"id": f"fc_{self.server.reply}", "name": reply.name, "args": reply.args}
            await self.send({"toolCall": {"functionCalls": [call]}})
            return
        for word in reply.split():
            audio = tone(self.server.script.ms_per_word / 1000, OUT_RATE)
            await self.send({"serverContent": {"outputTranscription": {"text": word + " "}}})
            step = int(CHUNK_S * OUT_RATE)
            for start in range(0, len(audio), step):
                piece = audio[start : start + step].astype("<i2").tobytes()
                data = {
                    "mimeType": f"audio/pcm;rate={OUT_RATE}",
                    "data": base64.b64encode(piece).decode(),
                }
                await self.send({"serverContent": {"modelTurn": {"parts": [{"inlineData": data}]}}})
                await asyncio.sleep(CHUNK_S * PACE)  # (an upstream speaking: paced)
        await self.send({"serverContent": {"generationComplete": True}})
        await self.send({"serverContent": {"turnComplete": True}})
        handle = f"handle-{self.server.reply}"
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})
        await self.send({"usageMetadata": {"totalTokenCount": 10}})
        if self.server.drop_after == self.server.reply:
            await self.ws.close()  # (the connection's time is up: resume the session)


def self_signed(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh certificate for 127.0.0.1, and that certificate's file
    (for a client to trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
