"""The audio codecs a SIP call can use: G.711 (PCMU, PCMA; 8 kHz) and G.722 (16 kHz).

A :class:`Codec` is what the SDP names (the static payload type, RFC 3551) and what the rest of
the call needs to know about it: the sample rate of its audio, the samples in a 20 ms frame,
and the Realtime ``wire_format`` under which its bytes may be relayed untouched to a remote
engine (empty: they may not). A :class:`Coder` turns one call's 20 ms frames into payloads and
back; G.722 is adaptive (ADPCM), so each direction of each call keeps its own state.

G.722 samples at 16 kHz, but its RTP clock runs at 8 kHz (RFC 3551 §4.5.2, a historical
error kept for compatibility): a 20 ms packet carries 320 samples in 160 bytes and moves the
timestamp by 160, as a G.711 packet does. The codec itself is sippy's ``libg722`` (the
``g722`` package on PyPI, from spandsp's public-domain G.722), at 64 kbit/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import g711

CLOCK_RATE = 8000
"""The RTP clock of every codec here (G.722's too)."""


@dataclass(frozen=True, slots=True)
class Codec:
    name: str
    payload: int
    rate: int
    """Samples per second of the audio (not the RTP clock)."""
    wire_format: str
    """The Realtime format a remote engine may take these bytes as; empty: decode first."""

    @property
    def frame_samples(self) -> int:
        """Audio samples in 20 ms."""
        return self.rate // 50

    def coder(self) -> Coder:
        return Coder(self)


PCMU = Codec("PCMU", 0, 8000, "audio/pcmu")
PCMA = Codec("PCMA", 8, 8000, "audio/pcma")
G722 = Codec("G722", 9, 16000, "")
CODECS = {c.payload: c for c in (PCMU, PCMA, G722)}
"""The codecs we speak, by static payload type."""


class Coder:
    """One call's encoder and decoder for ``codec`` (int16 mono at ``codec.rate``)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._encoder: Any = None
        self._decoder: Any = None
        if codec is G722:
            import G722 as _g722  # (sippy's libg722: the ``g722`` package)

            self._encoder = _g722.G722(16000, 64000)
            self._decoder = _g722.G722(16000, 64000)

    def encode(self, frame: np.ndarray) -> bytes:
        if self._encoder is not None:
            return bytes(self._encoder.encode(np.ascontiguousarray(frame, np.int16)))
        return g711.ulaw_encode(frame) if self.codec is PCMU else g711.alaw_encode(frame)

    def decode(self, payload: bytes) -> np.ndarray:
        if self._decoder is not None:
            return np.frombuffer(self._decoder.decode(payload), np.int16).copy()
        return g711.ulaw_decode(payload) if self.codec is PCMU else g711.alaw_decode(payload)
