import numpy as np
import pytest

from transports import g711


@pytest.mark.parametrize(
    ("sample", "ulaw", "alaw"),
    [
        (0, 0xFF, 0xD5),
        (-1, 0x7F, 0x55),
        (32767, 0x80, 0xAA),
        (-32768, 0x00, 0x2A),
        (1000, 0xCE, 0xFA),
    ],
)
def test_reference_codes(sample: int, ulaw: int, alaw: int) -> None:
    samples = np.array([sample], dtype=np.int16)
    assert g711.ulaw_encode(samples) == bytes([ulaw])
    assert g711.alaw_encode(samples) == bytes([alaw])


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)],
)
def test_round_trip_error_is_within_the_segment_step(encode, decode) -> None:
    samples = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    decoded = decode(encode(samples)).astype(np.int32)
    error = np.abs(decoded - samples.astype(np.int32))
    # G.711 keeps 4 mantissa bits: the error is at most ~1/32 of the magnitude (plus a floor).
    assert np.all(error <= np.abs(samples.astype(np.int32)) / 16 + 64)
    assert decode(encode(decoded.astype(np.int16))).tolist() == decoded.tolist()  # idempotent


def test_all_codes_decode_and_re_encode_to_themselves() -> None:
    codes = bytes(range(256))
    assert g711.ulaw_encode(g711.ulaw_decode(codes)) == codes.replace(b"\x7f", b"\xff")
    assert g711.alaw_encode(g711.alaw_decode(codes)) == codes
