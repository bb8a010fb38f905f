"""G.711 μ-law and A-law codecs (ITU-T G.711), table driven, in numpy.

Used by the Realtime endpoint for ``audio/pcmu`` and ``audio/pcma`` and by the telephone
transports. Both directions go through 65,536/256-entry tables built once at import.
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84
_CLIP = 32635


def _ulaw_encode_one(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), _CLIP) + _BIAS
    exponent = max(magnitude.bit_length() - 8, 0)
    exponent = min(exponent, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def _ulaw_decode_one(byte: int) -> int:
    byte = ~byte & 0xFF
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    magnitude = ((mantissa << 3) + _BIAS) << exponent
    magnitude -= _BIAS
    return -magnitude if sign else magnitude


def _alaw_encode_one(sample: int) -> int:
    sign = 0x00 if sample < 0 else 0x80
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


def _alaw_decode_one(byte: int) -> int:
    byte ^= 0x55
    sign = byte & 0x80
    exponent = (byte >> 4) & 0x07
    mantissa = byte & 0x0F
    if exponent == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if sign else -magnitude


_ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)
_ULAW_ENC = np.array([_ulaw_encode_one(int(s)) for s in _ALL_SAMPLES], dtype=np.uint8)
_ALAW_ENC = np.array([_alaw_encode_one(int(s)) for s in _ALL_SAMPLES], dtype=np.uint8)
_ULAW_DEC = np.array([_ulaw_decode_one(b) for b in range(256)], dtype=np.int16)
_ALAW_DEC = np.array([_alaw_decode_one(b) for b in range(256)], dtype=np.int16)


def ulaw_encode(samples: np.ndarray) -> bytes:
    return _ULAW_ENC[samples.astype(np.int32) + 32768].tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    return _ULAW_DEC[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: np.ndarray) -> bytes:
    return _ALAW_ENC[samples.astype(np.int32) + 32768].tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    return _ALAW_DEC[np.frombuffer(data, dtype=np.uint8)]
