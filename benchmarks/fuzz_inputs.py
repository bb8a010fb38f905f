"""What ``benchmarks/fuzz.py`` sends: random JSON, text and bytes, and the real Realtime, Twilio
and SDP messages mutated (``random.Random``, so a seed replays a run's inputs)."""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

from tests.offers import OFFER

Json = Any


# ---------------------------------------------------------------- random inputs


class Fuzzer:
    """Random JSON, text and bytes, and mutations of real messages (``random.Random``)."""

    WORDS = ["", "a", "x" * 300, "\u00e9\u4e2d", "\ud800", "\x00", "null", "-1", "1e999", "🙂"]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self, n: int = 20, surrogates: bool = True) -> str:
        r = self.rng
        pools = [
            lambda: chr(r.randint(32, 126)),
            lambda: chr(r.randint(0, 0x2FF)),
            lambda: chr(r.randint(0x300, 0x10FFFF)),
        ]
        if surrogates:
            pools.append(lambda: chr(r.randint(0xD800, 0xDFFF)))
        out = "".join(r.choice(pools)() for _ in range(r.randint(0, n)))
        if not surrogates:
            out = out.encode("utf-8", "replace").decode("utf-8", "replace")
        return out

    def scalar(self) -> Json:
        r = self.rng
        return r.choice(
            [
                None,
                r.random() < 0.5,
                r.randint(-(2**70), 2**70),
                r.randint(-5, 5000),
                r.uniform(-1e6, 1e6),
                r.choice([0.0, -0.0, 1e308, 5e-324]),
                self.text(),
                r.choice(self.WORDS),
            ]
        )

    def value(self, depth: int = 3) -> Json:
        r = self.rng
        if depth <= 0 or r.random() < 0.5:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth - 1) for _ in range(r.randint(0, 4))]
        return {self.key(): self.value(depth - 1) for _ in range(r.randint(0, 4))}

    def key(self) -> str:
        return self.rng.choice(["type", "id", "name", "audio", "x", "session", self.text(8)])

    def deep(self) -> str:
        n = self.rng.randint(100, 5000)
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}")])
        return opener * n + "1" + closer * n

    def mutate(self, message: Json, times: int = 1) -> Json:
        message = copy.deepcopy(message)
        for _ in range(times):
            message = self._mutate_once(message)
        return message

    def _mutate_once(self, root: Json) -> Json:
        r = self.rng
        nodes: list[tuple[Any, Any]] = []  # (container, key) of every value under the root

        def walk(node: Json) -> None:
            children = node.items() if isinstance(node, dict) else enumerate(node)
            for k, child in list(children):
                nodes.append((node, k))
                if isinstance(child, dict | list):
                    walk(child)

        if not isinstance(root, dict | list) or r.random() < 0.05:
            return self.value()
        walk(root)
        if not nodes:
            return self.value()
        parent, k = r.choice(nodes)
        op = r.choice(["replace", "replace", "delete", "add", "retype", "grow"])
        if op == "replace":
            parent[k] = self.value(2)
        elif op == "delete":
            del parent[k]
        elif op == "add" and isinstance(parent, dict):
            parent[self.key()] = self.value(2)
        elif op == "add":
            parent.insert(k, self.value(2))
        elif op == "retype":
            v = parent[k]
            parent[k] = [v] if r.random() < 0.5 else {"value": v} if v is not None else str(v)
        else:
            v = parent[k]
            parent[k] = v * r.randint(2, 50) if isinstance(v, str | list) else v
        return root


# ---------------------------------------------------------------- real messages


def _tone_b64(ms: int, rate: int = 24_000) -> str:
    n = rate * ms // 1000
    return base64.b64encode(bytes((i * 37) % 256 for i in range(2 * n))).decode()


TEXT_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather",
    "parameters": {
        "type": "object",
        "required": ["city"],
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "array", "items": {"type": "integer"}},
        },
    },
}
_VAD = {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 300}
# fmt: off
REALTIME_EVENTS: list[Json] = [
    {"type": "session.update", "session": {
        "instructions": "Be brief.", "output_modalities": ["text"]}},
    {"type": "session.update", "session": {"audio": {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": _VAD,
                  "transcription": {"model": "whisper-1", "language": "en"}},
        "output": {"voice": "marin", "speed": 1.2}}}},
    {"type": "session.update", "session": {
        "audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}},
        "tool_choice": "auto"}},
    {"type": "session.update", "session": {
        "tools": [_WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}}},
    {"type": "session.update", "session": {
        "turn_detection": None, "max_response_output_tokens": "inf", "temperature": 0.8}},
    {"type": "input_audio_buffer.append", "audio": _tone_b64(40)},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": TEXT_ITEM},
    {"type": "conversation.item.create", "previous_item_id": "root", "item": {
        "id": "item_fz", "type": "message", "role": "system",
        "content": [{"type": "input_text", "text": "Be kind."}]}},
    {"type": "conversation.item.create", "item": {
        "type": "function_call", "call_id": "call_fz", "name": "get_weather",
        "arguments": '{"city": "Paris"}'}},
    {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_fz", "output": "sunny"}},
    {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_audio", "audio": _tone_b64(60)}]}},
    {"type": "conversation.item.retrieve", "item_id": "item_fz"},
    {"type": "conversation.item.truncate", "item_id": "item_fz", "content_index": 0,
     "audio_end_ms": 100},
    {"type": "conversation.item.delete", "item_id": "item_fz"},
    {"type": "response.create", "response": {
        "output_modalities": ["text"], "instructions": "Say hi.", "metadata": {"k": "v"}}},
    {"type": "response.create", "response": {
        "conversation": "none", "input": [TEXT_ITEM, {"type": "item_reference", "id": "item_fz"}],
        "tool_choice": "none", "max_output_tokens": 50}},
    {"type": "response.create"},
    {"type": "response.cancel"},
    {"type": "output_audio_buffer.clear"},
]
TWILIO_START = {
    "event": "start", "sequenceNumber": "1", "streamSid": "MZfz",
    "start": {
        "accountSid": "ACfz", "streamSid": "MZfz", "callSid": "CAfz", "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"caller": "fuzz"},
    },
}
TWILIO_MESSAGES: list[Json] = [
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    TWILIO_START,
    {"event": "media", "sequenceNumber": "3", "streamSid": "MZfz", "media": {
        "track": "inbound", "chunk": "2", "timestamp": "40",
        "payload": base64.b64encode(b"\xff" * 160).decode()}},
    {"event": "dtmf", "streamSid": "MZfz", "sequenceNumber": "5",
     "dtmf": {"track": "inbound_track", "digit": "1"}},
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZfz", "mark": {"name": "resp_fz"}},
    {"event": "mark", "sequenceNumber": "4", "streamSid": "MZfz", "mark": {"name": "~item_fz~2"}},
]
# fmt: on


# ---------------------------------------------------------------- frames


def realtime_frame(fz: Fuzzer, oversized: tuple[int, ...]) -> tuple[str, str | bytes]:
    """One client event (``valid``, ``mutated``, ``random fields`` …) and its kind; now and then
    one whose audio is one of the ``oversized`` sizes."""
    r = fz.rng
    event = r.choice(REALTIME_EVENTS)
    roll = r.random()
    if roll < 0.15:
        return "valid", json.dumps(event)
    if roll < 0.55:
        return "mutated", json.dumps(fz.mutate(event, r.randint(1, 3)))
    if roll < 0.70:
        fields = {fz.key(): fz.value(2) for _ in range(r.randint(0, 4))}
        return "random fields", json.dumps({**fields, "type": event["type"]})
    if roll < 0.80:
        return "random json", json.dumps(fz.value(4))
    if roll < 0.88:
        return "random text", fz.text(200, surrogates=False)
    if roll < 0.95:
        return "binary", r.randbytes(r.randint(0, 300))
    if roll < 0.998:
        return "deep nesting", fz.deep()
    size = r.choice(oversized)
    return "oversized", json.dumps({"type": "input_audio_buffer.append", "audio": "A" * size})


def twilio_frame(fz: Fuzzer) -> tuple[str, str | bytes]:
    """One Twilio message (mostly media, then mutated and random ones, now and then a stop)."""
    r = fz.rng
    roll = r.random()
    if roll < 0.5:
        payload = base64.b64encode(r.randbytes(160)).decode()
        return "media", json.dumps(
            {"event": "media", "streamSid": "MZfz", "media": {"payload": payload}}
        )
    if roll < 0.8:
        return "mutated", json.dumps(fz.mutate(r.choice(TWILIO_MESSAGES), r.randint(1, 3)))
    if roll < 0.88:
        return "random json", json.dumps(fz.value(3))
    if roll < 0.94:
        return "random text", fz.text(200, surrogates=False)
    if roll < 0.99:
        return "binary", r.randbytes(r.randint(0, 200))
    return "stop", json.dumps({"event": "stop", "streamSid": "MZfz", "stop": {"callSid": "CAfz"}})


def sdp_offer(fz: Fuzzer) -> tuple[str, str]:
    """A real offer mutated line by line."""
    lines = OFFER.split("\r\n")
    r = fz.rng
    for _ in range(r.randint(1, 4)):
        i = r.randrange(len(lines))
        op = r.choice(["delete", "replace", "insert", "cut", "duplicate"])
        if op == "delete":
            del lines[i]
        elif op == "replace":
            lines[i] = r.choice([fz.text(40, False), r.choice(lines)[:2] + fz.text(10, False)])
        elif op == "insert":
            lines.insert(
                i,
                r.choice(
                    [
                        "a=recvonly",
                        "a=inactive",
                        "m=audio 9 X 0",
                        "a=rtcp",
                        "c=IN",
                        "a=setup:active",
                        fz.text(30, False),
                    ]
                ),
            )
        elif op == "cut":
            lines[i] = lines[i][: r.randint(0, len(lines[i]))]
        else:
            lines.insert(i, lines[i])
        if not lines:
            lines = [""]
    return "mutated offer", "\r\n".join(lines)
