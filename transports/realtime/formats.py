"""Realtime audio formats: ``audio/pcm`` (16-bit, 24 kHz), ``audio/pcmu`` and ``audio/pcma``
(G.711 at 8 kHz)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from pipeline.audio import pcm16_from_bytes, pcm16_to_bytes
from pipeline.errors import ProtocolError

from .. import g711


@dataclass(slots=True, frozen=True)
class AudioFormat:
    type: str
    rate: int

    def decode(self, data: bytes) -> np.ndarray:
        if self.type == "audio/pcmu":
            return g711.ulaw_decode(data)
        if self.type == "audio/pcma":
            return g711.alaw_decode(data)
        return pcm16_from_bytes(data)

    def encode(self, samples: np.ndarray) -> bytes:
        if self.type == "audio/pcmu":
            return g711.ulaw_encode(samples)
        if self.type == "audio/pcma":
            return g711.alaw_encode(samples)
        return pcm16_to_bytes(samples)

    def describe(self) -> dict[str, object]:
        if self.type == "audio/pcm":
            return {"type": "audio/pcm", "rate": self.rate}
        return {"type": self.type}


PCM = AudioFormat("audio/pcm", 24_000)
PCMU = AudioFormat("audio/pcmu", 8_000)
PCMA = AudioFormat("audio/pcma", 8_000)
_BY_TYPE = {f.type: f for f in (PCM, PCMU, PCMA)}
# Beta names, accepted as aliases.
_BY_TYPE.update({"pcm16": PCM, "g711_ulaw": PCMU, "g711_alaw": PCMA})


def parse_format(value: object, param: str) -> AudioFormat:
    """A format object (GA) or string (beta)."""
    if isinstance(value, str):
        name, rate = value, None
    elif isinstance(value, dict):
        name, rate = value.get("type", "audio/pcm"), value.get("rate")
    else:
        raise ProtocolError(
            f"{param} must be an object like {{'type': 'audio/pcm'}}",
            code="invalid_type",
            param=param,
        )
    fmt = _BY_TYPE.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ProtocolError(
            f"unsupported audio format {name!r}: use audio/pcm, audio/pcmu or audio/pcma",
            code="invalid_value",
            param=param,
        )
    if rate is not None and (fmt is not PCM or rate != PCM.rate):
        raise ProtocolError(
            f"unsupported rate {rate!r} for {fmt.type}: audio/pcm is 24000 Hz",
            code="invalid_value",
            param=param,
        )
    return fmt


def decode_base64(value: object, param: str) -> bytes:
    if not isinstance(value, str):
        raise ProtocolError(f"{param} must be a base64 string", code="invalid_type", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            f"{param} is not valid base64", code="invalid_audio", param=param
        ) from None
