"""``voice bench --echo``: the speakerphone caller's echo path and the measure of replies cut off
while the caller said nothing, on synthetic audio and timelines."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.harness import cli as bench_cli
from benchmarks.harness.clients import TwilioCall, with_echo
from benchmarks.harness.echo import EchoPath, Speakerphone, parse_echo
from benchmarks.harness.sip_client import SipCaller
from benchmarks.harness.stats import summarize
from benchmarks.harness.timeline import (
    CLEAR,
    DONE,
    REALTIME,
    SIP,
    TWILIO,
    Ev,
    Spoken,
    cut_off_in_silence,
)
from benchmarks.harness.webrtc_client import open_any_call

RATE = 8_000


def _chunks(phone: Speakerphone, seconds: float, start: float = 0.0) -> np.ndarray:
    """What the microphone hears, 20 ms at a time from ``start`` on."""
    return np.concatenate(
        [phone.echo(160, start + (k + 1) * 0.02) for k in range(int(seconds / 0.02))]
    )


def test_the_echo_comes_back_late_and_quieter() -> None:
    phone = Speakerphone(EchoPath(200, -20.0), RATE, start=0.0)
    phone.play(np.full(800, 1000, np.int16), now=0.1)  # 100 ms from 100 ms on
    heard = _chunks(phone, 1.0)
    loud = np.flatnonzero(heard)
    assert (loud[0], loud[-1] + 1) == (0.3 * RATE, 0.4 * RATE)  # 100 + 200 ms, for 100 ms
    assert np.allclose(heard[loud], 100.0)  # -20 dB


def test_audio_plays_back_to_back_and_clear_drops_the_rest() -> None:
    phone = Speakerphone(EchoPath(0, -6.0), RATE, start=0.0)
    for _ in range(10):  # a burst: 10 x 20 ms arriving at once, played one after the other
        phone.play(np.full(160, 2000, np.int16), now=0.0)
    phone.clear(now=0.1)  # after 100 ms
    heard = _chunks(phone, 0.4)
    assert np.count_nonzero(heard) == 0.1 * RATE


def test_mix_adds_the_echo_to_the_caller() -> None:
    phone = Speakerphone(EchoPath(0, -6.0), RATE, start=0.0)
    phone.play(np.full(160, 20_000, np.int16), now=0.0)
    mixed = phone.mix(np.full(160, 30_000, np.int16), now=0.02)
    assert mixed.dtype == np.int16 and int(mixed.max()) == 32767  # clipped, not wrapped


@pytest.mark.parametrize("text", ["200", "a:b", "200:3", "-5:-10", "5000:-10"])
def test_bad_echo_paths_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_echo(text)


def test_echo_is_for_phone_callers_only() -> None:
    assert parse_echo("150:-15") == EchoPath(150, -15.0)
    opener = with_echo(open_any_call, EchoPath(150, -15.0))
    call = opener(TWILIO, "ws://127.0.0.1:9/x")
    assert isinstance(call, TwilioCall) and call.phone is not None
    sip = opener(SIP, "sip:agent@127.0.0.1:5060")
    assert isinstance(sip, SipCaller) and sip.phone is not None
    assert opener(REALTIME, "ws://127.0.0.1:9/x").phone is None
    for protocols in ("realtime", "twilio,realtime"):
        with pytest.raises(SystemExit):
            bench_cli.main(["--protocol", protocols, "--echo", "200:-12"])


def test_cut_off_in_silence_counts_cuts_between_speech_and_interruption() -> None:
    events = [
        Ev(0.5, CLEAR),  # while the caller spoke: not counted
        Ev(2.0, CLEAR),
        Ev(2.5, DONE, "resp_1", status="cancelled", reason="turn_detected"),
        Ev(2.6, DONE, "resp_2", status="cancelled", reason="client_cancelled"),
        Ev(4.0, CLEAR),  # the scripted interruption's: not counted
    ]
    assert cut_off_in_silence(events, 1.0, Spoken(3.5, 4.5)) == 2
    assert cut_off_in_silence(events, 1.0, None) == 3
    record = {"cut": False, "missed": True, "cut_off_in_silence": 2, "pauses": []}
    assert (
        summarize([record, {**record, "cut_off_in_silence": 1}], TWILIO)["cut_off_in_silence"] == 3
    )
