"""``voice bench --protocol sip --echo``: the SIP caller on a speakerphone hears the agent's RTP
again in its own microphone, and hears a cut-off (a barge-in's cleared queue) as a ``clear``.
Real loopback UDP between the caller and a socket standing for the agent's RTP port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from benchmarks.harness.echo import EchoPath, Speakerphone
from benchmarks.harness.sip_client import CUT_SILENCE_S, PADDING, SipCaller, cut_short
from benchmarks.harness.timeline import AUDIO, CLEAR
from transports import g711
from transports.sip import rtp

HOST = "127.0.0.1"
FRAME = 160


class AgentPort(asyncio.DatagramProtocol):
    """The agent's RTP port: what the caller's microphone sends, decoded."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.frames.put_nowait(g711.ulaw_decode(rtp.RtpPacket.parse(data).payload))


@pytest.fixture
async def line() -> AsyncIterator[tuple[SipCaller, AgentPort]]:
    loop = asyncio.get_running_loop()
    agent, port = await loop.create_datagram_endpoint(AgentPort, local_addr=(HOST, 0))
    mic, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
    caller = SipCaller(f"sip:agent@{HOST}:5060")
    caller._media, caller.remote_rtp = mic, agent.get_extra_info("sockname")[:2]
    yield caller, port
    mic.close()
    agent.close()


def agent_packets(audio: np.ndarray) -> list[bytes]:
    packetizer = rtp.Packetizer(0)
    return [
        packetizer.packet(g711.ulaw_encode(audio[i : i + FRAME])).encode()
        for i in range(0, len(audio), FRAME)
    ]


async def test_the_microphone_hears_the_agent_again_later_and_quieter(
    line: tuple[SipCaller, AgentPort],
) -> None:
    caller, agent = line
    now = time.perf_counter()
    caller.phone = Speakerphone(EchoPath(500, -6.0), 8000, start=now - 2.0)
    # one second of the agent arrived from 1 s ago on; heard back 500 ms later
    for k, packet in enumerate(agent_packets(np.full(8000, 4000, np.int16))):
        caller.rtp_received(packet, now - 1.0 + k * 0.02)
    await caller._send_audio(np.zeros(FRAME, np.int16))  # the caller says nothing
    async with asyncio.timeout(5):
        echo = await agent.frames.get()
    played = g711.ulaw_decode(g711.ulaw_encode(np.full(FRAME, 4000, np.int16)))
    heard = np.rint(played * 10 ** (-6 / 20)).astype(np.int16)  # -6 dB
    assert np.array_equal(echo, g711.ulaw_decode(g711.ulaw_encode(heard)))  # the echo alone

    caller.phone = None  # no speakerphone: the microphone sends what the caller says
    await caller._send_audio(np.full(FRAME, 1000, np.int16))
    async with asyncio.timeout(5):
        clean = await agent.frames.get()
    assert np.allclose(clean, 1000, rtol=0.05)


SPEECH = (np.sin(np.arange(8 * FRAME) * 0.3) * 8000).astype(np.int16)


def heard(*parts: np.ndarray) -> SipCaller:
    """A caller that received these parts of the agent's line, one packet every 20 ms from 1 s."""
    caller = SipCaller(f"sip:agent@{HOST}:5060")
    for k, packet in enumerate(agent_packets(np.concatenate(parts))):
        caller.rtp_received(packet, 1.0 + k * 0.02)
    return caller


def test_a_cut_mid_speech_is_heard_as_a_clear() -> None:
    caller = heard(SPEECH, np.zeros(int(CUT_SILENCE_S * 8000), np.int16))
    kinds = [(ev.kind, ev.t) for ev in caller.events]
    (clear,) = [i for i, (kind, _) in enumerate(kinds) if kind == CLEAR]
    assert kinds[clear - 1][0] == AUDIO and caller.events[clear - 1].loud  # the last of it
    assert kinds[clear] == (CLEAR, pytest.approx(1.0 + 8 * 0.02))  # when the silence came
    assert [ev.kind for ev in caller.events[clear + 1 :]] == [AUDIO] * 20


def test_a_hold_that_goes_on_is_no_clear() -> None:
    short = np.zeros(int(CUT_SILENCE_S * 8000) - FRAME, np.int16)
    assert not [ev for ev in heard(SPEECH, short, SPEECH).events if ev.kind == CLEAR]
    assert not [ev for ev in heard(SPEECH, short).events if ev.kind == CLEAR]  # not yet


@pytest.mark.parametrize(
    "last",
    [
        "padded",  # a reply's end: its last frame padded with zeros
        "quiet",  # a pause between clauses, or speech that faded out
    ],
)
def test_an_end_or_a_pause_is_no_clear(last: str) -> None:
    loud = (np.sin(np.arange(FRAME) * 0.3) * 8000).astype(np.int16)
    frame = loud.copy()
    if last == "padded":
        frame[-PADDING:] = 0
    else:
        frame[-80:] = (frame[-80:] // 100).astype(np.int16)
    assert cut_short(loud, np.zeros(FRAME, np.int16))  # (the same frame, unpadded and loud: cut)
    assert not cut_short(g711.ulaw_decode(g711.ulaw_encode(frame)), np.zeros(FRAME, np.int16))
    assert not cut_short(None, np.zeros(FRAME, np.int16))
    assert not cut_short(loud, loud)
