"""The call's events go on the caller's data channel, and none is lost to the race between the
caller's audio and the channel: SRTP flows once DTLS is up, the channel opens after its SCTP
association, so a caller who speaks at once is heard before the channel is there. No network:
a stand-in channel records what is sent."""

from __future__ import annotations

import json
from typing import Any

from pipeline import messages as m
from pipeline.session import SessionSettings
from transports.webrtc import EARLY_EVENTS, EVENTS_CHANNEL, RATE, WebRtcOptions

from .fakes import fake_engines
from .harness import Harness
from .test_webrtc_heard import call_on


class Channel:
    """What aiortc's RTCDataChannel shows the call: a label, a state, send() and on()."""

    def __init__(self) -> None:
        self.label, self.readyState = EVENTS_CHANNEL, "open"
        self.sent: list[dict[str, Any]] = []

    def on(self, name: str, handler: Any) -> None:
        pass

    def send(self, text: str) -> None:
        self.sent.append(json.loads(text))


async def test_events_before_the_channel_opens_follow_session_created() -> None:
    async with Harness(fake_engines(["hi"], ["hello"]), SessionSettings(output_rate=RATE)) as h:
        call = call_on(h, WebRtcOptions())
        try:
            call._send(call._render(m.SpeechStarted("item_caller", 1000)))
            call._send(call._render(m.SpeechStopped("item_caller", 2500)))
            channel = Channel()
            call._on_datachannel(channel)  # type: ignore[arg-type]
            types = [e["type"] for e in channel.sent]
            assert types == [
                "session.created",
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
            ]
            call._send(call._render(m.SpeechStarted("item_caller_2", 4000)))  # open: at once
            assert channel.sent[-1]["item_id"] == "item_caller_2"
        finally:
            await call.close("test over")


async def test_the_events_kept_for_a_channel_are_bounded() -> None:
    async with Harness(fake_engines(["hi"], ["hello"]), SessionSettings(output_rate=RATE)) as h:
        call = call_on(h, WebRtcOptions())
        try:
            for i in range(EARLY_EVENTS + 10):
                call._send(call._render(m.SpeechStarted(f"item_{i}", i)))
            channel = Channel()
            call._on_datachannel(channel)  # type: ignore[arg-type]
            assert len(channel.sent) == 1 + EARLY_EVENTS  # session.created and the first kept
            assert channel.sent[-1]["item_id"] == f"item_{EARLY_EVENTS - 1}"
        finally:
            await call.close("test over")
